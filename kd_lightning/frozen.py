"""Students with frozen parameters (a LoRA model's base weights, a frozen backbone).

What does not train is kept out of the optimizer (``requires_grad=False`` parameters are never handed to
it) and out of checkpoints: :func:`drop_frozen` removes those weights from a checkpoint's state dict and
records a digest of them; :func:`restore_frozen` puts the live network's values back before loading, after
checking that they are the weights the checkpoint was trained on (otherwise the adapters would silently
sit on another base).
"""
from __future__ import annotations

import hashlib
from typing import Any, Dict, List

import torch
from torch import nn

__all__ = ["frozen_keys", "frozen_digest", "drop_frozen", "restore_frozen", "FROZEN_RECORD"]

# The checkpoint entry that records what drop_frozen removed.
FROZEN_RECORD = "frozen_parameters"


def frozen_keys(net: nn.Module) -> List[str]:
    """The state-dict keys of ``net`` that hold a parameter with ``requires_grad=False`` (tied copies too)."""
    return [k for k, v in net.state_dict(keep_vars=True).items()
            if isinstance(v, nn.Parameter) and not v.requires_grad]


def frozen_digest(net: nn.Module) -> str:
    """SHA-256 over the names, shapes, dtypes and bytes of ``net``'s frozen parameters."""
    h = hashlib.sha256()
    state = net.state_dict()
    for key in frozen_keys(net):
        tensor = state[key].detach().cpu().contiguous()
        h.update(f"{key}|{tuple(tensor.shape)}|{tensor.dtype}|".encode())
        h.update(tensor.view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def drop_frozen(checkpoint: Dict[str, Any], net: nn.Module, prefix: str) -> None:
    """Remove ``net``'s frozen weights (keys ``prefix + name``) from ``checkpoint["state_dict"]`` and record
    their digest; a network without frozen parameters leaves the checkpoint as it is."""
    keys = frozen_keys(net)
    if not keys:
        return
    state = checkpoint["state_dict"]
    for key in keys:
        state.pop(prefix + key, None)
    checkpoint[FROZEN_RECORD] = {"prefix": prefix, "count": len(keys), "sha256": frozen_digest(net)}


def restore_frozen(checkpoint: Dict[str, Any], net: nn.Module, prefix: str) -> None:
    """Fill the weights :func:`drop_frozen` removed from the live ``net``, so strict loading still checks every
    trained key. Raises ValueError when ``net``'s frozen weights are not those the checkpoint was saved with."""
    record = checkpoint.get(FROZEN_RECORD)
    if not record or record.get("prefix") != prefix:
        return
    mine = frozen_digest(net)
    if mine != record.get("sha256"):
        raise ValueError(
            f"the checkpoint's trained weights were saved over frozen weights with SHA-256 {record.get('sha256')}, "
            f"but this network's frozen weights hash to {mine}; build the same base model (the same pretrained "
            "weights and the same frozen parts) before loading it")
    state, live = checkpoint["state_dict"], net.state_dict()
    for key in frozen_keys(net):
        state.setdefault(prefix + key, live[key])
