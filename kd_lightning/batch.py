"""Batch unpacking: tuples ``(x, y[, index])`` and dicts with configurable keys.

A dict batch in the Hugging Face manner (``input_ids``, ``attention_mask``, ``token_type_ids``, ...,
``labels``) gives ``x`` as a dict of the model's keyword inputs: every key except the target, the
sample index, the stored teacher outputs (dense or top-k) and the ``labeled`` mask. ``input_key`` may also name several
keys (a list) to pass exactly those.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence, Union

from torch import Tensor

# The keys of stored top-k teacher outputs in a batch (:mod:`kd_lightning.cache`): ids and log-probabilities of
# the k most likely classes or tokens, the mass left outside them, and the temperature they were taken at.
TOPK_KEYS = ("teacher_topk_ids", "teacher_topk_logprobs", "teacher_rest", "teacher_temperature")

_INPUT_KEYS = ("input", "inputs", "image", "x", "pixel_values")
_TARGET_KEYS = ("target", "label", "labels", "y")


@dataclass
class Batch:
    x: Any
    y: Optional[Tensor] = None
    index: Optional[Tensor] = None
    teacher_logits: Optional[Tensor] = None
    labeled: Optional[Tensor] = None


def _pick(batch: Mapping, key: Optional[str], defaults: Sequence[str], what: str, required: bool) -> Any:
    if key is not None:
        if key not in batch:
            raise KeyError(f"the batch has no {what} key {key!r}; its keys are {sorted(batch)}")
        return batch[key]
    for k in defaults:
        if k in batch:
            return batch[k]
    if required:
        raise KeyError(
            f"cannot find the {what} in a dict batch with keys {sorted(batch)}; "
            f"set {'input_key' if what == 'input' else 'target_key'}=... on the module"
        )
    return None


def _keyword_inputs(batch: Mapping, input_key: Union[None, str, Sequence[str]], reserved: Sequence[str]) -> Any:
    """The model's keyword inputs of a dict batch, or None when the batch holds one input tensor."""
    if isinstance(input_key, (list, tuple)):
        missing = [k for k in input_key if k not in batch]
        if missing:
            raise KeyError(f"the batch has no input key(s) {missing}; its keys are {sorted(batch)}")
        return {k: batch[k] for k in input_key}
    if input_key is None and "input_ids" in batch:
        return {k: v for k, v in batch.items() if k not in reserved}
    return None


def unpack(batch: Any, input_key: Union[None, str, Sequence[str]] = None, target_key: Optional[str] = None,
           index_key: str = "index", teacher_logits_key: str = "teacher_logits") -> Batch:
    """Split a batch into inputs, labels, optional sample indices and optional cached teacher logits."""
    if isinstance(batch, Mapping):
        target_name = target_key or next((k for k in _TARGET_KEYS if k in batch), None)
        keywords = _keyword_inputs(batch, input_key, (target_name, index_key, teacher_logits_key, "labeled",
                                                    *TOPK_KEYS))
        return Batch(
            x=keywords if keywords is not None else _pick(batch, input_key, _INPUT_KEYS, "input", True),
            y=_pick(batch, target_key, _TARGET_KEYS, "target", False),
            index=batch.get(index_key),
            teacher_logits=batch.get(teacher_logits_key),
            labeled=batch.get("labeled"),
        )
    if isinstance(batch, (list, tuple)):
        if len(batch) == 1:
            return Batch(x=batch[0])
        if len(batch) in (2, 3):
            return Batch(x=batch[0], y=batch[1], index=batch[2] if len(batch) == 3 else None)
        raise ValueError(f"tuple batches must be (x, y) or (x, y, index); got {len(batch)} elements — use a dict batch")
    return Batch(x=batch)
