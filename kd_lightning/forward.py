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


def fused_head_problem(net: nn.Module) -> Optional[Tuple[type, str]]:
    """Why ``net``'s output layer cannot be fused into a loss, as ``(exception type, message)``; None when it
    can: it needs ``base_model`` (the final hidden states) and a linear ``get_output_embeddings()`` whose output
    is the logits as they are (no scaling or soft-capping after it)."""
    name = type(net).__name__
    base = getattr(net, "base_model", None)
    head = net.get_output_embeddings() if hasattr(net, "get_output_embeddings") else None
    if not isinstance(base, nn.Module) or base is net or not isinstance(head, nn.Linear):
        return TypeError, (f"needs a Hugging Face-style causal LM (base_model giving the final hidden states, "
                           f"get_output_embeddings() an nn.Linear); {name} is not one")
    config = getattr(net, "config", None)
    for attr in ("final_logit_softcapping", "logit_scale", "output_multiplier_scale"):
        value = getattr(config, attr, None)
        if value not in (None, 1, 1.0, 0, 0.0):
            return ValueError, (f"{name} post-processes its logits ({attr}={value}); the fused loss takes "
                                "hidden @ Wᵀ as the logits")
    return None


def final_hidden(net: nn.Module, input_ids: Tensor,
                 attention_mask: Optional[Tensor]) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
    """A causal LM's final hidden states ``[B, T, H]`` (its ``base_model``, no key-value cache) with its output
    layer's weight ``[V, H]`` and bias (None without one): the logits are ``hidden @ weightᵀ + bias``, for a
    model that :func:`fused_head_problem` accepts."""
    out = net.base_model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    hidden = getattr(out, "last_hidden_state", None)
    hidden = hidden if isinstance(hidden, Tensor) else out[0]
    head = net.get_output_embeddings()
    return hidden, head.weight, getattr(head, "bias", None)
