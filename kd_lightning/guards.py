"""Two misuses caught in one line each, before a step runs (both model families: a network on the meta device;
language models: a batch without attention_mask).

- A network on the meta device (built with ``device_map="meta"``, ``torch.device("meta")`` or
  ``init_empty_weights`` and never loaded) has shapes but no values; torch's own error names no network.
- A batch without ``attention_mask`` would have every position distilled, padding included, as if it
  were text. A mask of ones is derived only when it is provably right: the pad token id is known and
  occurs nowhere in ``input_ids``. Otherwise the batch is refused: a pad id that also ends documents
  (GPT-2 style, pad = eos) cannot tell padding from text, so guessing would be silently wrong.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional

import torch
from torch import Tensor, nn

__all__ = ["check_materialized", "attention_mask_of"]


def check_materialized(net: Optional[nn.Module], role: str) -> None:
    """Raise when ``net`` (the ``role``: student, teacher ...) has parameters or buffers on the meta device."""
    if net is None:
        return
    empty = [name for name, t in [*net.named_parameters(), *net.named_buffers()] if t.is_meta]
    if empty:
        raise ValueError(f"the {role} network {type(net).__name__} has {len(empty)} tensors on the meta device "
                         f"(e.g. {empty[0]!r}), which hold no values; load its weights first (from_pretrained "
                         "without device_map='meta', or to_empty(device=...) then load_state_dict)")


def attention_mask_of(batch: Mapping[str, Any], pad_token_id: Optional[int]) -> Tensor:
    """``batch["attention_mask"]``, or a mask of ones when that is provably right; one line otherwise."""
    mask = batch.get("attention_mask")
    if mask is not None:
        return mask
    ids = batch["input_ids"]
    if pad_token_id is None:
        raise ValueError("the batch has no attention_mask and the pad token id is unknown, so padding cannot be "
                         "told from text and would be distilled; add attention_mask to the batches (1 = token, "
                         "0 = padding) or pass the tokenizer")
    found = int((ids == int(pad_token_id)).sum())
    if found:
        raise ValueError(f"the batch has no attention_mask but input_ids hold the pad token id {int(pad_token_id)} "
                         f"at {found} positions, which would be distilled as text; add attention_mask to the "
                         "batches (1 = token, 0 = padding)")
    return torch.ones_like(ids)
