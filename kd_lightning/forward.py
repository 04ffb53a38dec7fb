"""Calling networks the way users' models expect: a tensor input or keyword inputs, and logits out of
whatever the model returns (a tensor, a Hugging Face ``ModelOutput``, a dict, or a tuple)."""
from __future__ import annotations

import inspect
from typing import Any, Dict, Mapping, Optional, Tuple

from torch import Tensor, nn

Inputs = Any  # a Tensor, or a Mapping of keyword inputs (input_ids, attention_mask, token_type_ids, ...)


def call(net: nn.Module, x: Inputs) -> Any:
    """``net(**x)`` for keyword inputs (a Hugging Face batch), ``net(x)`` otherwise."""
    return net(**x) if isinstance(x, Mapping) else net(x)


def logits_of(output: Any, who: str = "model") -> Tensor:
    """The logits in ``output``: a tensor, ``.logits``, ``["logits"]`` or the first item of a tuple."""
    if isinstance(output, Tensor):
        return output
    logits = getattr(output, "logits", None)
    if isinstance(logits, Tensor):
        return logits
    if isinstance(output, Mapping) and isinstance(output.get("logits"), Tensor):
        return output["logits"]
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
        return output[0]  # (logits, features) and similar
    raise TypeError(
        f"the {who} returned a {type(output).__name__}; expected logits: a tensor, an object with .logits "
        "(Hugging Face), a dict with a 'logits' entry, or a tuple whose first item is the logits")


def call_signature(net: nn.Module) -> Tuple[bool, bool]:
    """(passes attention_mask, passes use_cache): only the arguments ``net.forward`` names explicitly."""
    try:
        params = inspect.signature(net.forward).parameters
    except (TypeError, ValueError):
        return False, False
    return "attention_mask" in params, "use_cache" in params


def lm_logits(net: nn.Module, input_ids: Tensor, attention_mask: Optional[Tensor], passes_mask: bool,
              passes_use_cache: bool) -> Tensor:
    """Call a causal LM on ``input_ids`` and return its logits ``[B, T, V]`` (read as :func:`logits_of` does).

    ``passes_mask`` / ``passes_use_cache`` come from :func:`call_signature`: the mask goes only to a model
    that names it, and a model with a key-value cache is told not to build one (no generation here).
    """
    kwargs: Dict[str, Any] = {}
    if passes_mask and attention_mask is not None:
        kwargs["attention_mask"] = attention_mask
    if passes_use_cache:
        kwargs["use_cache"] = False
    return logits_of(net(input_ids, **kwargs), f"language model {type(net).__name__}")


def batch_size(x: Inputs) -> int:
    """Samples in ``x`` (the first dimension of a tensor, or of the first tensor of keyword inputs)."""
    if isinstance(x, Tensor):
        return x.shape[0]
    if isinstance(x, Mapping):
        for value in x.values():
            if isinstance(value, Tensor):
                return value.shape[0]
    raise TypeError(f"cannot tell the batch size of a {type(x).__name__} input")


def head(x: Inputs, n: int) -> Inputs:
    """The first ``n`` samples of ``x``."""
    if isinstance(x, Mapping):
        return {k: v[:n] if isinstance(v, Tensor) else v for k, v in x.items()}
    return x[:n]
