"""Checks on a local Hugging Face model directory before it is loaded, each failing in one line that
names the file: a directory without weights, weights cut short by an interrupted copy, and a teacher
whose tokenizer is not the data's (token-level distillation compares distributions id by id, so two
tokenizers silently pair unrelated tokens).

The safetensors layout checked here is the published one: an 8-byte little-endian header length, a JSON
header whose entries give each tensor's ``data_offsets``, then the data; a complete file ends exactly
at the largest offset.
"""
from __future__ import annotations

import json
import os
import struct
import zipfile
from pathlib import Path
from typing import Any, List, Optional, Union

PathLike = Union[str, os.PathLike]

__all__ = ["check_model_dir", "check_weights_file", "check_teacher_tokenizer", "write_checksums", "check_checksums"]

WEIGHTS = ("model.safetensors", "pytorch_model.bin")
INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json")
SAVE_HINT = "save the model again with model.save_pretrained(dir)"
# Written beside the weights by kd-train and kd-export (``sha256sum -c checksums.sha256`` reads it too): a
# flipped bit inside a tensor leaves a file that loads, so only a digest shows the copy is not what was saved.
CHECKSUMS = "checksums.sha256"


def check_model_dir(directory: PathLike) -> List[Path]:
    """The weight files of a local model directory, each checked complete; one line naming the file
    otherwise. A path that is not a directory is left to the loader (it names the hub id)."""
    root = Path(directory)
    if not root.is_dir():
        return []
    if not (root / "config.json").is_file():
        raise ValueError(f"model directory {os.fspath(root)!r} has no config.json; {SAVE_HINT}")
    files = [root / name for name in WEIGHTS if (root / name).is_file()]
    for index in (root / name for name in INDEXES):
        if index.is_file():
            files += _shards(index)
    if not files:
        raise ValueError(f"model directory {os.fspath(root)!r} holds no weights (no {' or '.join(WEIGHTS)}, and no "
                         f"shard index); copy the weight files next to config.json, or {SAVE_HINT}")
    for path in files:
        check_weights_file(path)
    check_checksums(root)
    return files


def _sha256(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(4 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_checksums(directory: PathLike) -> Path:
    """``checksums.sha256`` in ``directory``: the SHA-256 of every file in it (``sha256sum`` format)."""
    root = Path(directory)
    names = sorted(p.name for p in root.iterdir() if p.is_file() and p.name != CHECKSUMS)
    path = root / CHECKSUMS
    path.write_text("".join(f"{_sha256(root / n)}  {n}\n" for n in names))
    return path


def check_checksums(directory: PathLike) -> None:
    """Every file ``checksums.sha256`` lists (when the directory has one) must still have its digest."""
    root = Path(directory)
    listing = root / CHECKSUMS
    if not listing.is_file():
        return
    for number, line in enumerate(listing.read_text(errors="replace").splitlines(), 1):
        digest, _, name = line.partition("  ")
        if not line.strip():
            continue
        if len(digest) != 64 or not name or "/" in name:
            raise ValueError(f"{os.fspath(listing)!r} line {number} is not '<sha256>  <file name>'; delete it, or "
                             f"{SAVE_HINT}")
        path = root / name
        if path.is_file() and _sha256(path) != digest:
            raise ValueError(f"file {os.fspath(path)!r} does not match its SHA-256 in {CHECKSUMS} (it changed after "
                             f"it was saved: a damaged copy or disk); copy it again, or {SAVE_HINT}")


def _shards(index: Path) -> List[Path]:
    try:
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise ValueError(f"shard index {os.fspath(index)!r} is not a JSON object with a weight_map; {SAVE_HINT}") from None
    missing = [n for n in names if not (index.parent / n).is_file()]
    if missing:
        raise ValueError(f"shard index {os.fspath(index)!r} names {missing[0]!r}, which is not in the directory "
                         f"({len(missing)} of {len(names)} shards missing); copy the missing shards, or {SAVE_HINT}")
    return [index.parent / n for n in names]


def check_weights_file(path: PathLike) -> None:
    """A ``.safetensors`` file must end where its header says; a ``.bin`` must be a complete zip archive
    (torch's format, whose directory sits at the end: a cut file has none)."""
    path = Path(path)
    size = path.stat().st_size
    if size == 0:
        raise ValueError(f"weights file {os.fspath(path)!r} is empty (0 bytes); it was not written completely; "
                         f"copy it again, or {SAVE_HINT}")
    if path.suffix == ".safetensors":
        expected = _safetensors_size(path, size)
        if expected != size:
            raise ValueError(f"weights file {os.fspath(path)!r} is truncated or damaged ({size} bytes, its header "
                             f"describes {expected}); copy it again, or {SAVE_HINT}")
    elif path.suffix == ".bin" and not zipfile.is_zipfile(path):
        raise ValueError(f"weights file {os.fspath(path)!r} ({size} bytes) is truncated or not a torch checkpoint; "
                         f"copy it again, or {SAVE_HINT}")


def _safetensors_size(path: Path, size: int) -> Optional[int]:
    """The size a complete file would have, from its header (None: no readable header)."""
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return None
        (length,) = struct.unpack("<Q", head)
        if length > size - 8:
            return None
        try:
            header = json.loads(f.read(length))
            ends = [int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"]
        except (ValueError, KeyError, TypeError, IndexError, AttributeError):
            return None
    return 8 + length + max(ends, default=0)


def check_teacher_tokenizer(teacher_dir: PathLike, data_tokenizer: Any) -> Optional[Any]:
    """Refuse a teacher whose saved tokenizer differs from the data's, in one line naming the directory,
    a token that differs and the fix. Returns the teacher's tokenizer, or None when the directory holds
    none (then only the vocabulary sizes can be compared, which the module does)."""
    root = Path(teacher_dir)
    if not root.is_dir() or not any((root / name).is_file() for name in TOKENIZER_FILES):
        return None
    import transformers

    teacher = transformers.AutoTokenizer.from_pretrained(os.fspath(root), local_files_only=True)
    theirs, ours = teacher.get_vocab(), data_tokenizer.get_vocab()
    if theirs == ours:
        return teacher
    differ = sorted(t for t in set(theirs) | set(ours) if theirs.get(t) != ours.get(t))
    token = differ[0]

    def where(vocab: dict) -> str:
        return "absent" if token not in vocab else f"id {vocab[token]}"

    raise ValueError(
        f"teacher {os.fspath(root)!r} tokenizes differently from the data ({len(differ)} tokens differ, e.g. {token!r}: "
        f"{where(theirs)} for the teacher, {where(ours)} for the data); token-level KD pairs ids, so use the "
        f"teacher's tokenizer for the data (data.tokenizer={os.fspath(root)})")
