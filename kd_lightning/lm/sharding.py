"""Sharding language models with FSDP: one unit per decoder layer, in the student and the frozen teacher alike.

Lightning's ``FSDPStrategy`` wraps the whole LightningModule, so a policy that picks decoder layers by their
class wraps the teacher's layers as well as the student's: each layer is gathered only while it runs, and the
teacher's units hold no gradients or optimizer state because none of their parameters requires a gradient
(:class:`~kd_lightning.CausalLMDistillationModule` never gives them to the optimizer). The embeddings, final
norms and output layers of both models stay in the root unit. Matching by class *name* needs no import of
``transformers``, so one policy covers every Hugging Face family listed (and any other class name given).
"""
from __future__ import annotations

from typing import Iterable

from torch import nn

# The decoder-layer (transformer block) classes of common Hugging Face causal LMs.
DECODER_LAYERS = ("LlamaDecoderLayer", "GPT2Block", "MistralDecoderLayer", "Qwen2DecoderLayer", "Qwen3DecoderLayer",
                  "GemmaDecoderLayer", "Gemma2DecoderLayer", "Phi3DecoderLayer", "GPTNeoXLayer", "OPTDecoderLayer",
                  "FalconDecoderLayer", "SmolLM3DecoderLayer")


class LayerClasses:
    """True for modules whose class name is one of ``names`` (the predicate of :func:`decoder_layer_policy`).

    Example::

        >>> from kd_lightning.lm.sharding import LayerClasses
        >>> pick = LayerClasses(["LlamaDecoderLayer"])
        >>> # [name for name, m in module.named_modules() if pick(m)]: the layers FSDP would wrap
    """

    def __init__(self, names: Iterable[str] = DECODER_LAYERS):
        self.names = frozenset(str(n) for n in names)
        if not self.names:
            raise ValueError("LayerClasses needs at least one class name (e.g. 'LlamaDecoderLayer')")

    def __call__(self, module: nn.Module) -> bool:
        return type(module).__name__ in self.names

    def __repr__(self) -> str:
        return f"LayerClasses({sorted(self.names)})"


def decoder_layer_policy(names: Iterable[str] = DECODER_LAYERS):
    """An FSDP ``auto_wrap_policy`` (``torch.distributed.fsdp.wrap.CustomPolicy``) with one unit per module whose
    class name is in ``names``: ``FSDPStrategy(auto_wrap_policy=decoder_layer_policy(), use_orig_params=True)``.

    ``use_orig_params=True`` is needed: the root unit then mixes the student's trainable embeddings with the
    teacher's frozen ones, and the optimizer is built from the original (student) parameters.
    """
    from torch.distributed.fsdp.wrap import CustomPolicy

    return CustomPolicy(LayerClasses(names))
