"""Checks on what the text data modules read, each failing in one line that names the file (and line)
or the argument, says what is wrong and how to fix it — before anything trains.

A language model scored on nothing reports a perplexity of exactly 1.00 (the mean of no losses is read
as 0), and a held-out split that repeats the training text reports a perplexity that means nothing; both
are refused here rather than reported.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Iterable, List, Sequence, Union

import torch
from torch import Tensor

IGNORE_INDEX = -100
PathLike = Union[str, os.PathLike]

__all__ = ["read_utf8", "check_fraction", "check_string_field", "predicted_tokens", "check_learnable",
           "check_held_out_differs"]


def read_utf8(path: PathLike) -> str:
    """The text of ``path``; a file that is not UTF-8 raises one line naming the file, line and byte."""
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise ValueError(f"{os.fspath(path)!r} line {line} is not UTF-8 (byte 0x{data[err.start]:02x} at offset "
                         f"{err.start}); convert the file to UTF-8, e.g. iconv -f latin1 -t utf-8") from None


def check_fraction(name: str, value: Any) -> float:
    """``value`` as a float strictly inside (0, 1), or one line naming ``name``."""
    try:
        fraction = float(value)
    except (TypeError, ValueError):
        fraction = float("nan")
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"{name}={value!r} must be a fraction strictly between 0 and 1 (the share held out); "
                         f"set e.g. {name}=0.1")
    return fraction


def check_string_field(value: Any, path: PathLike, line: int, key: str) -> str:
    """A JSON-lines field must be a string: a number, list or null would be trained on as its ``str()``."""
    if not isinstance(value, str):
        raise ValueError(f"{os.fspath(path)!r} line {line} field {key!r} is {type(value).__name__} ({value!r:.40}), "
                         "not text; write it as a JSON string or fix the row")
    return value


def predicted_tokens(labels: Union[Tensor, Iterable[Sequence[int]]]) -> int:
    """How many tokens a causal LM is scored on: labels after the first position (position ``i`` predicts
    token ``i + 1``) that are not ``-100``."""
    if isinstance(labels, Tensor):
        return int((labels[..., 1:] != IGNORE_INDEX).sum())
    return sum(sum(1 for t in row[1:] if t != IGNORE_INDEX) for row in labels)


def check_learnable(labels: dict, source: str, fix: str, warn_rows: bool = True) -> None:
    """Refuse when the training or held-out part (``labels``: role -> label rows) has no token to score;
    with ``warn_rows``, warn with the counts when only some rows have none (a prompt truncated away)."""
    rows = {role: (rows_without_prediction(y), len(y)) for role, y in labels.items()}
    for role, y in labels.items():
        if predicted_tokens(y) == 0:
            empty, total = rows[role]
            raise ValueError(f"{source}: the {role} part has no token to predict ({empty} of {total} rows score "
                             f"none); every model would score a perplexity of 1.00; {fix}")
    lost = {role: r for role, r in rows.items() if r[0]} if warn_rows else {}
    if lost:
        text = ", ".join(f"{empty} of {total} {role} rows" for role, (empty, total) in lost.items())
        warnings.warn(f"{source}: {text} have no token to predict and are scored on nothing; {fix}", stacklevel=3)


def check_held_out_differs(train: Sequence[Any], held: Sequence[Any], source: str, fix: str) -> None:
    """Refuse a held-out part every item of which is also in the training part (text items: contained in
    the training text), since its perplexity would measure memorisation."""
    if all(isinstance(x, str) for x in held):
        held = [x for x in held if x.strip()]  # blank text is in any text; the scored-token check judges it
    if not held:
        return
    if all(isinstance(x, str) for x in held):
        joined = "\n".join(train)
        repeated = all(x in joined for x in held)
    else:
        seen = set(map(_hashable, train))
        repeated = all(_hashable(x) in seen for x in held)
    if repeated:
        raise ValueError(f"{source}: every held-out example also appears in the training data ({len(held)} "
                         f"held out), so the held-out scores would measure memorisation; {fix}")


def _hashable(item: Any) -> Any:
    if isinstance(item, list):
        return tuple(_hashable(x) for x in item)
    if isinstance(item, tuple):
        return tuple(_hashable(x) for x in item)
    return item


def rows_without_prediction(labels: Union[Tensor, List[Sequence[int]]]) -> int:
    """Rows that score no token."""
    if isinstance(labels, Tensor):
        return int(((labels[..., 1:] != IGNORE_INDEX).sum(-1) == 0).sum())
    return sum(1 for row in labels if predicted_tokens([row]) == 0)
