"""Text DataModules for causal language models: batches of ``input_ids``, ``attention_mask``, ``labels``.

- :class:`PydocTextDataModule`: the English help texts shipped with CPython (``pydoc_data.topics``),
  split by topic, with a small byte-level BPE tokenizer trained on the training topics — an offline
  corpus that every Python installation has.
- :class:`TextFileDataModule`: a local ``.txt`` file, or a folder of them.
- :class:`PromptResponseDataModule`: a local JSON-lines file of prompt/response pairs; prompt tokens carry
  the label -100 (no loss), so only responses are learned.
- :class:`PydocPairsDataModule`: the pydoc topics cut into fixed-length prompt/response pairs (the same
  split and tokenizer as :class:`PydocTextDataModule`), for methods that need prompts (on-policy, SeqKD).

Labels equal ``input_ids`` (the model shifts: position ``i`` predicts token ``i + 1``); padding has
``attention_mask`` 0 and label -100. ``transformers`` and ``tokenizers`` are imported when needed.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from ..exact_resume import ResumableSampler, train_sampler
from ..io import atomic_path, write_json
from .text_checks import check_fraction, check_held_out_differs, check_learnable, check_string_field, read_utf8

log = logging.getLogger(__name__)

IGNORE_INDEX = -100
PAD_TOKEN, EOS_TOKEN = "<pad>", "<eos>"
PathLike = Union[str, os.PathLike]

__all__ = ["PydocTextDataModule", "TextFileDataModule", "PromptResponseDataModule", "PydocPairsDataModule",
           "train_bpe_tokenizer", "train_tokenizer", "pydoc_topics", "check_context_length", "check_tokenizer", "PackedSequences"]


# ----------------------------------------------------------------------------------- checks
def check_context_length(seq_len: int, model: Any) -> int:
    """Raise when ``seq_len`` exceeds the model's context (``max_position_embeddings`` / ``n_positions``)."""
    config = getattr(model, "config", None)
    limit = None
    for attr in ("max_position_embeddings", "n_positions", "n_ctx"):
        limit = getattr(config, attr, None) if config is not None else getattr(model, attr, None)
        if limit is not None:
            break
    if limit is not None and int(seq_len) > int(limit):
        raise ValueError(f"seq_len={seq_len} is longer than the model's context of {limit} positions; "
                         f"use seq_len <= {limit} or build the model with max_position_embeddings >= {seq_len}")
    return int(seq_len)


def resolve_tokenizer(tokenizer: Any) -> Any:
    """``tokenizer`` as given, or loaded from a local directory when it is a path (nothing is downloaded)."""
    if isinstance(tokenizer, (str, os.PathLike)):
        from ..models.lm import load_tokenizer

        return load_tokenizer(tokenizer)
    return tokenizer


def check_tokenizer(tokenizer: Any) -> Any:
    """A tokenizer must have a pad token (batches are padded with it)."""
    if getattr(tokenizer, "pad_token_id", None) is None:
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        raise ValueError(f"tokenizer {name!r} has no pad token; set one first, e.g. "
                         "tokenizer.pad_token = tokenizer.eos_token")
    return tokenizer


# ------------------------------------------------------------------------------------ corpus
def pydoc_topics() -> Dict[str, str]:
    """``pydoc_data.topics.topics``: CPython's help texts, topic name -> English text."""
    from pydoc_data.topics import topics

    return dict(topics)


def split_by_name(docs: Dict[str, str], val_every: int) -> Tuple[List[str], List[str]]:
    """Deterministic split: sorted names, every ``val_every``-th one held out."""
    names = sorted(docs)
    train = [docs[n] for i, n in enumerate(names) if i % val_every != val_every // 2]
    held = [docs[n] for i, n in enumerate(names) if i % val_every == val_every // 2]
    return train, held


# --------------------------------------------------------------------------------- tokenizer
def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


TOKENIZER_KINDS = ("bpe", "unigram")


def train_bpe_tokenizer(texts: Sequence[str], vocab_size: int = 2048, cache_dir: Optional[PathLike] = None,
                        min_frequency: int = 2) -> Any:
    """A byte-level BPE tokenizer (``<pad>``, ``<eos>`` specials) as a ``PreTrainedTokenizerFast``.

    With ``cache_dir`` the trained tokenizer is stored under ``cache_dir/tokenizers/<key>/`` where ``key``
    hashes the training text and every setting (and the ``tokenizers`` version); ``meta.json`` records
    the SHA-256 of ``tokenizer.json`` and is written last, so a reuse first checks the key and the digest
    and retrains on any mismatch. Files are replaced atomically.
    """
    return train_tokenizer(texts, vocab_size, cache_dir, kind="bpe", min_frequency=min_frequency)


def train_tokenizer(texts: Sequence[str], vocab_size: int = 2048, cache_dir: Optional[PathLike] = None,
                    kind: str = "bpe", min_frequency: int = 2) -> Any:
    """A byte-level tokenizer of ``kind`` ``"bpe"`` (:func:`train_bpe_tokenizer`) or ``"unigram"`` (a
    Unigram language-model vocabulary over the same 256 byte symbols, so no text is ever unknown), with the
    ``<pad>`` and ``<eos>`` specials, cached under ``cache_dir`` by content hash as described there."""
    import tokenizers

    if kind not in TOKENIZER_KINDS:
        raise ValueError(f"tokenizer kind={kind!r} is not known; use one of {', '.join(TOKENIZER_KINDS)}")
    if kind == "unigram" and (not isinstance(vocab_size, int) or isinstance(vocab_size, bool) or vocab_size < 260):
        raise ValueError(f"vocab_size={vocab_size!r} is too small for a byte-level Unigram tokenizer (256 byte "
                         "symbols and the specials); use at least 260")
    if kind == "bpe":
        settings = {"kind": "byte_level_bpe", "vocab_size": int(vocab_size), "min_frequency": int(min_frequency),
                    "special_tokens": [PAD_TOKEN, EOS_TOKEN], "tokenizers": tokenizers.__version__}
    else:
        settings = {"kind": "byte_level_unigram", "vocab_size": int(vocab_size),
                    "special_tokens": [PAD_TOKEN, EOS_TOKEN], "tokenizers": tokenizers.__version__}
    h = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for text in texts:
        h.update(_sha256_bytes(text.encode("utf-8")).encode())
    key = h.hexdigest()[:32]
    if cache_dir is not None:
        directory = Path(cache_dir) / "tokenizers" / key
        cached = _load_cached_tokenizer(directory, key)
        if cached is not None:
            return _wrap(cached)
    tok = _train(texts, settings)
    if cache_dir is not None:
        blob = tok.to_str().encode("utf-8")
        with atomic_path(directory / "tokenizer.json") as tmp:
            tmp.write_bytes(blob)
        write_json(directory / "meta.json", {"key": key, "sha256": _sha256_bytes(blob), "settings": settings})
    return _wrap(tok)


def _load_cached_tokenizer(directory: Path, key: str) -> Any:
    """The cached tokenizer of ``key``, or None: absent, or damaged (then retrained and overwritten, with a
    warning naming the file; never used)."""
    from tokenizers import Tokenizer

    meta_path, blob_path = directory / "meta.json", directory / "tokenizer.json"
    if not meta_path.exists() and not blob_path.exists():
        return None
    why = ""
    try:
        meta = json.loads(meta_path.read_text())
        blob = blob_path.read_bytes()
    except (OSError, ValueError) as err:
        meta, blob, why = None, b"", f"{type(err).__name__}: {err}"
    if not why and not isinstance(meta, dict):
        why = f"{meta_path} holds a JSON {type(meta).__name__}, not its record"
    elif not why and (meta.get("key") != key or meta.get("sha256") != _sha256_bytes(blob)):
        why = f"{blob_path} does not match the digest in {meta_path.name}"
    if not why:
        try:
            return Tokenizer.from_str(blob.decode("utf-8"))
        except Exception as err:  # matches its digest yet does not parse: written by another version
            why = f"{blob_path} does not load ({type(err).__name__})"
    log.warning("cached tokenizer %s is damaged (%s): training it again", directory, why)
    return None


def _train(texts: Sequence[str], settings: Dict[str, Any]) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    unigram = settings["kind"] == "byte_level_unigram"
    tok = Tokenizer(models.Unigram() if unigram else models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    if unigram:
        trainer = trainers.UnigramTrainer(vocab_size=settings["vocab_size"], special_tokens=settings["special_tokens"],
                                          show_progress=False, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    else:
        trainer = trainers.BpeTrainer(vocab_size=settings["vocab_size"], min_frequency=settings["min_frequency"],
                                      special_tokens=settings["special_tokens"], show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(list(texts), trainer=trainer)
    return tok


def _wrap(tok: Any) -> Any:
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD_TOKEN, eos_token=EOS_TOKEN,
                                   bos_token=EOS_TOKEN, unk_token=None)


def documents_with_tokenizer(datamodule: Any) -> Tuple[List[str], List[str]]:
    """A document data module's ``(train, held-out)`` documents; a module without a tokenizer gets the
    cached byte-level BPE of its training documents."""
    train_docs, val_docs = datamodule.documents()
    if datamodule.tokenizer is None:
        datamodule.tokenizer = train_bpe_tokenizer(train_docs, datamodule.vocab_size, datamodule.cache_dir)
    return train_docs, val_docs


# ----------------------------------------------------------------------------------- datasets
class PackedSequences(Dataset):
    """A token stream cut into rows of ``seq_len``; the last partial row is padded (label -100)."""

    def __init__(self, stream: Tensor, seq_len: int, pad_id: int):
        n = stream.numel()
        rows = max(1, -(-n // seq_len))
        ids = torch.full((rows * seq_len,), pad_id, dtype=torch.long)
        ids[:n] = stream
        self.input_ids = ids.view(rows, seq_len)
        self.attention_mask = torch.zeros_like(self.input_ids)
        self.attention_mask.view(-1)[:n] = 1
        self.labels = self.input_ids.masked_fill(self.attention_mask == 0, IGNORE_INDEX)

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def __getitem__(self, i: int) -> Dict[str, Tensor]:
        return {"input_ids": self.input_ids[i], "attention_mask": self.attention_mask[i], "labels": self.labels[i]}


def encode_stream(tokenizer: Any, docs: Sequence[str]) -> Tensor:
    """Each document's tokens followed by the end-of-sequence token, concatenated."""
    eos = tokenizer.eos_token_id
    out: List[int] = []
    for doc in docs:
        out.extend(tokenizer(doc, add_special_tokens=False)["input_ids"])
        if eos is not None:
            out.append(eos)
    return torch.tensor(out, dtype=torch.long)


class _PackedTextDataModule(L.LightningDataModule):
    """Shared part: documents -> tokenizer -> packed train / held-out sequences."""

    def __init__(self, seq_len: int = 128, batch_size: int = 16, tokenizer: Any = None, vocab_size: int = 2048,
                 cache_dir: Optional[PathLike] = None, num_workers: int = 0):
        super().__init__()
        if int(seq_len) < 2:
            raise ValueError(f"seq_len={seq_len} is too short: a sequence needs >= 2 tokens to predict one")
        if int(batch_size) < 1:
            raise ValueError(f"batch_size={batch_size} must be >= 1")
        self.seq_len, self.batch_size, self.num_workers = int(seq_len), int(batch_size), int(num_workers)
        self.vocab_size = int(vocab_size)
        self.cache_dir = cache_dir
        self.tokenizer = check_tokenizer(resolve_tokenizer(tokenizer)) if tokenizer is not None else None
        self.train_set: Optional[PackedSequences] = None
        self.val_set: Optional[PackedSequences] = None
        self.bytes_per_token: Optional[float] = None

    def documents(self) -> Tuple[List[str], List[str]]:  # pragma: no cover - abstract
        raise NotImplementedError

    def source(self) -> str:
        """What the documents come from, as error messages name it."""
        return type(self).__name__

    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_set is not None:
            return
        train_docs, val_docs = documents_with_tokenizer(self)
        pad = self.tokenizer.pad_token_id
        train_stream, val_stream = encode_stream(self.tokenizer, train_docs), encode_stream(self.tokenizer, val_docs)
        self.train_set = PackedSequences(train_stream, self.seq_len, pad)
        self.val_set = PackedSequences(val_stream, self.seq_len, pad)
        # A packed stream's last row may hold one token; only a part with nothing at all is refused.
        check_learnable({"training": self.train_set.labels, "held-out": self.val_set.labels}, self.source(),
                        "give it more text", warn_rows=False)
        # Bits per byte: UTF-8 bytes of the held-out text (with one byte per end-of-sequence) per token.
        val_bytes = sum(len(d.encode("utf-8")) + 1 for d in val_docs)
        self.bytes_per_token = val_bytes / max(1, val_stream.numel())

    def prepare_data(self) -> None:
        # Train (or check) the cached tokenizer once, in the main process.
        if self.tokenizer is None and self.cache_dir is not None:
            train_bpe_tokenizer(self.documents()[0], self.vocab_size, self.cache_dir)

    def train_dataloader(self) -> DataLoader:
        self.setup("fit")
        return DataLoader(self.train_set, batch_size=self.batch_size, sampler=ResumableSampler(self.train_set),
                          num_workers=self.num_workers)  # shuffled; resumes mid-epoch exactly

    def val_dataloader(self) -> DataLoader:
        self.setup("validate")
        return DataLoader(self.val_set, batch_size=self.batch_size, shuffle=False, num_workers=self.num_workers)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()


class PydocTextDataModule(_PackedTextDataModule):
    """CPython's ``pydoc_data.topics`` help texts; every ``val_every``-th topic (sorted by name) is held out.

    Args:
        seq_len: context length of the packed sequences (default 128).
        vocab_size: size of the byte-level BPE vocabulary trained on the training topics (default 2048).
        cache_dir: where the tokenizer is cached (keyed by content hash; None: retrain each time).
        tokenizer: use this tokenizer instead of training one.
    """

    def __init__(self, seq_len: int = 128, batch_size: int = 16, vocab_size: int = 2048,
                 cache_dir: Optional[PathLike] = None, tokenizer: Any = None, val_every: int = 10,
                 num_workers: int = 0):
        super().__init__(seq_len, batch_size, tokenizer, vocab_size, cache_dir, num_workers)
        if int(val_every) < 2:
            raise ValueError(f"val_every={val_every} must be >= 2 (one topic in val_every is held out)")
        self.val_every = int(val_every)

    def documents(self) -> Tuple[List[str], List[str]]:
        return split_by_name(pydoc_topics(), self.val_every)


class TextFileDataModule(_PackedTextDataModule):
    """A local text file or a folder of ``.txt`` files.

    A folder: files sorted by name, every ``val_every``-th one held out (at least one file each side).
    One file: the last ``val_fraction`` of its lines is held out.
    """

    def __init__(self, path: PathLike, seq_len: int = 128, batch_size: int = 16, vocab_size: int = 2048,
                 cache_dir: Optional[PathLike] = None, tokenizer: Any = None, val_every: int = 10,
                 val_fraction: float = 0.1, num_workers: int = 0):
        super().__init__(seq_len, batch_size, tokenizer, vocab_size, cache_dir, num_workers)
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"text path {os.fspath(path)!r} does not exist; point at a .txt file or a folder of them")
        self.val_every, self.val_fraction = max(2, int(val_every)), check_fraction("val_fraction", val_fraction)

    def source(self) -> str:
        return repr(os.fspath(self.path))

    def documents(self) -> Tuple[List[str], List[str]]:
        train, held = self._split()
        fix = ("hold out other text (another val_fraction, or distinct files)" if self.path.is_dir()
               else "give the file text that is not repeated, or another val_fraction")
        check_held_out_differs(train, held, self.source(), fix)
        return train, held

    def _split(self) -> Tuple[List[str], List[str]]:
        if self.path.is_dir():
            files = sorted(self.path.rglob("*.txt"))
            if not files:
                raise ValueError(f"folder {os.fspath(self.path)!r} holds no .txt files; add some or point at a file")
            if len(files) >= 2:
                docs = {str(f.relative_to(self.path)): read_utf8(f) for f in files}
                train, held = split_by_name(docs, min(self.val_every, len(files)))
                if train and held:
                    return train, held
            text = "\n".join(read_utf8(f) for f in files)
        else:
            text = read_utf8(self.path)
        lines = text.splitlines(keepends=True)
        if len(lines) < 2:
            raise ValueError(f"{os.fspath(self.path)!r} has fewer than 2 lines: too little text for a train and "
                             "a held-out part")
        cut = min(len(lines) - 1, max(1, round(len(lines) * (1 - self.val_fraction))))
        return ["".join(lines[:cut])], ["".join(lines[cut:])]


# ------------------------------------------------------------------------------ prompt/response
class PromptResponseDataset(Dataset):
    """Rows of ``(input_ids, labels)`` token lists."""

    def __init__(self, rows: List[Tuple[List[int], List[int]]]):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> Tuple[List[int], List[int]]:
        return self.rows[i]

    def fingerprint(self) -> str:
        """Content hash of every row (caches keyed by the data use it: teacher signals, sequence-KD completions)."""
        return hashlib.sha256(json.dumps(self.rows).encode()).hexdigest()


class PadCollate:
    """Right-pads ``(input_ids, labels)`` lists to the longest in the batch."""

    def __init__(self, pad_id: int):
        self.pad_id = int(pad_id)

    def __call__(self, rows: List[Tuple[List[int], List[int]]]) -> Dict[str, Tensor]:
        width = max(len(ids) for ids, _ in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, (x, y) in enumerate(rows):
            ids[r, :len(x)] = torch.tensor(x)
            labels[r, :len(y)] = torch.tensor(y)
            mask[r, :len(x)] = 1
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}


class _PairsDataModule(L.LightningDataModule):
    """Shared part of the prompt/response data modules: rows of ``(input_ids, labels)`` lists, padded per
    batch by :class:`PadCollate`; subclasses fill ``train_set`` and ``val_set`` in ``setup``."""

    tokenizer: Any = None
    batch_size: int = 16
    num_workers: int = 0
    train_set: Optional[PromptResponseDataset] = None
    val_set: Optional[PromptResponseDataset] = None

    def _loader(self, ds: Dataset, shuffle: bool) -> DataLoader:
        return DataLoader(ds, batch_size=self.batch_size, sampler=train_sampler(ds, shuffle), num_workers=self.num_workers,
                          collate_fn=PadCollate(self.tokenizer.pad_token_id))

    def train_dataloader(self) -> DataLoader:
        self.setup("fit")
        return self._loader(self.train_set, True)

    def val_dataloader(self) -> DataLoader:
        self.setup("validate")
        return self._loader(self.val_set, False)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()


class PromptResponseDataModule(_PairsDataModule):
    """Prompt/response pairs from a local JSON-lines file; loss only on response tokens.

    Each line is a JSON object with ``prompt_key`` and ``response_key`` fields. A row is
    ``prompt tokens + response tokens + eos``, truncated to ``seq_len``; prompt positions get label -100.
    The last ``val_fraction`` of the lines is held out (or all of ``val_path`` when given). ``tokenizer``
    is a tokenizer, a local directory to load one from, or None: a byte-level BPE of ``vocab_size`` tokens
    trained on the training pairs (cached under ``cache_dir`` by content hash).
    """

    def __init__(self, path: PathLike, tokenizer: Any = None, seq_len: int = 128, batch_size: int = 16,
                 prompt_key: str = "prompt", response_key: str = "response", val_path: Optional[PathLike] = None,
                 val_fraction: float = 0.1, num_workers: int = 0, vocab_size: int = 2048,
                 cache_dir: Optional[PathLike] = None):
        super().__init__()
        for p in (path, val_path):
            if p is not None and not Path(p).is_file():
                raise FileNotFoundError(f"JSON-lines file {os.fspath(p)!r} does not exist; point at a local .jsonl file")
        self.tokenizer = check_tokenizer(resolve_tokenizer(tokenizer)) if tokenizer is not None else None
        self.vocab_size, self.cache_dir = int(vocab_size), cache_dir
        self.path, self.val_path = Path(path), Path(val_path) if val_path is not None else None
        self.seq_len, self.batch_size, self.num_workers = int(seq_len), int(batch_size), int(num_workers)
        self.prompt_key, self.response_key = prompt_key, response_key
        self.val_fraction = check_fraction("val_fraction", val_fraction)
        self.train_set: Optional[PromptResponseDataset] = None
        self.val_set: Optional[PromptResponseDataset] = None

    def _read(self, path: Path) -> List[Tuple[str, str]]:
        pairs = []
        for n, line in enumerate(read_utf8(path).splitlines(), start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{os.fspath(path)!r} line {n} is not valid JSON ({err.msg}); write one JSON object per line") from None
            missing = [k for k in (self.prompt_key, self.response_key) if not isinstance(obj, dict) or k not in obj]
            if missing:
                have = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
                raise ValueError(f"{os.fspath(path)!r} line {n} has no field {missing[0]!r} (it has {have}); set "
                                 "prompt_key / response_key to the field names of your file")
            pairs.append(tuple(check_string_field(obj[k], path, n, k) for k in (self.prompt_key, self.response_key)))
        if not pairs:
            raise ValueError(f"{os.fspath(path)!r} holds no examples")
        return pairs

    def _encode(self, pairs: List[Tuple[str, str]]) -> List[Tuple[List[int], List[int]]]:
        rows = []
        for prompt_text, response_text in pairs:
            prompt = self.tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
            response = self.tokenizer(response_text, add_special_tokens=False)["input_ids"]
            if self.tokenizer.eos_token_id is not None:
                response = response + [self.tokenizer.eos_token_id]
            ids = (prompt + response)[: self.seq_len]
            labels = ([IGNORE_INDEX] * len(prompt) + response)[: self.seq_len]
            rows.append((ids, labels))
        return rows

    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_set is not None:
            return
        rows = self._read(self.path)
        if self.val_path is not None:
            train, val = rows, self._read(self.val_path)
        else:
            cut = min(len(rows) - 1, max(1, round(len(rows) * (1 - self.val_fraction)))) if len(rows) > 1 else 1
            train, val = rows[:cut], rows[cut:] or rows[-1:]
        held_from = repr(os.fspath(self.val_path or self.path))
        check_held_out_differs(train, val, held_from, "hold out other pairs (a val_path with other rows, or more "
                               "rows in the file)")
        if self.tokenizer is None:
            self.tokenizer = train_bpe_tokenizer([p + r for p, r in train], self.vocab_size, self.cache_dir)
        self.train_set = PromptResponseDataset(self._encode(train))
        self.val_set = PromptResponseDataset(self._encode(val))
        check_learnable({"training": [y for _, y in self.train_set.rows], "held-out": [y for _, y in self.val_set.rows]},
                        repr(os.fspath(self.path)), f"prompts longer than seq_len={self.seq_len} leave no response; raise seq_len "
                        "or shorten the prompts")


class PydocPairsDataModule(_PairsDataModule):
    """CPython's pydoc topics as prompt/response pairs: loss and held-out perplexity on responses only.

    The topics are split as :class:`PydocTextDataModule` splits them (sorted by name, every
    ``val_every``-th held out) and tokenized with the same cached byte-level BPE (trained on the training
    topics). Each topic's tokens, followed by the end-of-sequence token, are cut into consecutive windows
    of ``prompt_tokens + response_tokens``: the window's first ``prompt_tokens`` are the prompt (label
    -100), the rest the response. A topic's last window is kept when it has at least one response token,
    so some responses are shorter (and end with the end-of-sequence token). ``bytes_per_token`` counts the
    UTF-8 bytes of the held-out responses, so bits per byte are on responses too.
    """

    def __init__(self, prompt_tokens: int = 32, response_tokens: int = 32, batch_size: int = 16,
                 vocab_size: int = 2048, cache_dir: Optional[PathLike] = None, tokenizer: Any = None,
                 val_every: int = 10, num_workers: int = 0):
        super().__init__()
        if int(prompt_tokens) < 1 or int(response_tokens) < 1:
            raise ValueError(f"prompt_tokens={prompt_tokens} and response_tokens={response_tokens} must both be >= 1")
        if int(val_every) < 2:
            raise ValueError(f"val_every={val_every} must be >= 2 (one topic in val_every is held out)")
        if int(batch_size) < 1:
            raise ValueError(f"batch_size={batch_size} must be >= 1")
        self.prompt_tokens, self.response_tokens = int(prompt_tokens), int(response_tokens)
        self.seq_len = self.prompt_tokens + self.response_tokens
        self.batch_size, self.num_workers, self.val_every = int(batch_size), int(num_workers), int(val_every)
        self.vocab_size, self.cache_dir = int(vocab_size), cache_dir
        self.tokenizer = check_tokenizer(resolve_tokenizer(tokenizer)) if tokenizer is not None else None
        self.bytes_per_token: Optional[float] = None

    def documents(self) -> Tuple[List[str], List[str]]:
        return split_by_name(pydoc_topics(), self.val_every)

    def pairs(self, docs: Sequence[str]) -> List[Tuple[List[int], List[int]]]:
        """``(input_ids, labels)`` of every window of every document (labels -100 on the prompt)."""
        rows = []
        for doc in docs:
            stream = encode_stream(self.tokenizer, [doc]).tolist()
            for start in range(0, len(stream), self.seq_len):
                window = stream[start:start + self.seq_len]
                if len(window) > self.prompt_tokens:
                    rows.append((window, [IGNORE_INDEX] * self.prompt_tokens + window[self.prompt_tokens:]))
        return rows

    def prepare_data(self) -> None:
        if self.tokenizer is None and self.cache_dir is not None:
            train_bpe_tokenizer(self.documents()[0], self.vocab_size, self.cache_dir)

    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_set is not None:
            return
        train_docs, val_docs = documents_with_tokenizer(self)
        self.train_set = PromptResponseDataset(self.pairs(train_docs))
        self.val_set = PromptResponseDataset(self.pairs(val_docs))
        if not self.train_set.rows or not self.val_set.rows:
            raise ValueError(f"prompt_tokens={self.prompt_tokens} leaves no response in the training or held-out "
                             "topics; use a shorter prompt")
        responses = [[t for t in labels if t != IGNORE_INDEX] for _, labels in self.val_set.rows]
        nbytes = sum(len(self.tokenizer.decode(r).encode("utf-8")) for r in responses)
        self.bytes_per_token = nbytes / max(1, sum(len(r) for r in responses))
