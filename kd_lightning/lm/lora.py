"""LoRA students: low-rank adapters (``peft``) on a frozen causal-LM base.

``peft`` is imported inside the functions (the ``peft`` extra), so ``import kd_lightning`` works without it.
Training and checkpoints need nothing LoRA-specific: the base's parameters have ``requires_grad=False``,
so :class:`~kd_lightning.lm.CausalLMDistillationModule` optimises and saves only the adapters
(:mod:`kd_lightning.frozen`).
"""
from __future__ import annotations

import copy
from typing import Optional, Sequence

from torch import nn

__all__ = ["lora_student", "merged_copy", "PEFT_MISSING"]

PEFT_MISSING = ("LoRA students need the peft package, which is not installed; install it with "
                "pip install 'kd-lightning[peft]'")


def lora_student(net: nn.Module, r: int = 8, alpha: float = 16, dropout: float = 0.0,
                 target_modules: Optional[Sequence[str]] = None) -> nn.Module:
    """``net`` (a Hugging Face causal LM) frozen, with rank-``r`` LoRA adapters scaled by ``alpha / r`` on
    ``target_modules`` (module names such as ``q_proj``; None lets peft pick its default for the
    architecture). Returns the ``peft`` model; only the adapters require gradients."""
    try:
        import peft
    except ImportError:
        raise ImportError(PEFT_MISSING) from None
    if not isinstance(r, int) or r < 1:
        raise ValueError(f"LoRA rank r={r!r} must be a positive integer, e.g. r=8")
    config = peft.LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, task_type="CAUSAL_LM",
                             target_modules=list(target_modules) if target_modules else None)
    return peft.get_peft_model(net, config)


def merged_copy(net: nn.Module) -> nn.Module:
    """A plain model with the adapters of PEFT model ``net`` merged into its base weights (``net`` is unchanged)."""
    if not hasattr(net, "merge_and_unload"):
        raise TypeError(f"merged=True needs a PEFT student (LoRA adapters on a base); this student is a "
                        f"{type(net).__name__}: save it with merged=False")
    return copy.deepcopy(net).merge_and_unload()
