"""Two tokenizers over one text: both tokenizations with their character offsets, and how they line up.

A teacher and a student with different tokenizers see the same text as different token sequences. The
data give each sample's text once; :class:`CrossTokenizerCollate` tokenizes it with both (any pair of
Hugging Face *fast* tokenizers: it needs ``return_offsets_mapping``) and adds what the cross-tokenizer
losses (:class:`~kd_lightning.losses.ULD`, :class:`~kd_lightning.losses.SpanAlign`) read:

* the student's ``input_ids`` / ``attention_mask`` / ``labels`` (the module's usual keys, so evaluation
  and bits per byte work as for one tokenizer) and ``bytes``, the UTF-8 bytes of the text the student
  predicts in each row (everything after its first token, plus one byte per end-of-sequence token);
* the teacher's ``teacher_input_ids`` / ``teacher_attention_mask``;
* the alignment (:func:`align_tokens`): ``student_span`` / ``teacher_span`` (the counted span of each
  token, -1 for none) and ``student_edge`` / ``teacher_edge`` (pairs of positions that end the same text).

**Spans.** A *boundary* of a tokenization is a character position where one token ends and the next
begins (two tokens that share a character, as byte-level tokens that split one UTF-8 character do, have
no boundary between them). The common boundaries ``c_0 < c_1 < …`` of both tokenizations cut the text into
the smallest pieces that both tokenize on their own: span ``k`` is the text ``[c_k, c_{k+1})`` and holds
whole tokens of each. The piece before ``c_0`` holds each row's first token, which no model predicts,
so it is never a counted span. Every common boundary followed by a token in both tokenizations is an
*edge*: the last tokens before it are at ``student_edge`` / ``teacher_edge``, and there both models predict
the first token of the same next span from the same text.

:class:`CrossTokenizerTextDataModule` serves a document data module's text this way, with a student
tokenizer of its own (trained on the same training documents, cached by content hash).
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from ..data.text import IGNORE_INDEX, check_tokenizer, documents_with_tokenizer, resolve_tokenizer, train_tokenizer

__all__ = ["align_tokens", "shared_token_ids", "CrossTokenizerCollate", "CrossTokenizerTextDataModule",
           "TokenizerPair", "tokenizer_name", "check_fast_tokenizer", "chunk_documents"]

Offsets = Sequence[Tuple[int, int]]
Sample = Union[str, Dict[str, Any]]
# Keys a cross-tokenizer batch carries beyond the student's input_ids / attention_mask / labels.
XTOK_KEYS = ("teacher_input_ids", "teacher_attention_mask", "student_span", "teacher_span", "student_edge",
             "teacher_edge")


def tokenizer_name(tokenizer: Any) -> str:
    """How a message names a tokenizer: its path or class, and its size."""
    if tokenizer is None:
        return "None"
    size = len(tokenizer.get_vocab()) if hasattr(tokenizer, "get_vocab") else "?"
    path = getattr(tokenizer, "name_or_path", "")
    if path:
        return f"{path!r} ({size} tokens)"
    backend = getattr(tokenizer, "backend_tokenizer", None)  # a tokenizer made in memory: name its model (BPE, Unigram)
    kind = type(backend.model).__name__ if backend is not None else type(tokenizer).__name__
    return f"a {kind} tokenizer of {size} tokens"


def check_fast_tokenizer(tokenizer: Any, role: str) -> Any:
    """A Hugging Face fast tokenizer (character offsets need one)."""
    if not getattr(tokenizer, "is_fast", False):
        raise TypeError(f"the {role} tokenizer {tokenizer_name(tokenizer)} is not a Hugging Face fast tokenizer; "
                        "cross-tokenizer distillation needs character offsets (return_offsets_mapping): load it with "
                        "AutoTokenizer.from_pretrained(..., use_fast=True) or wrap a `tokenizers` object in "
                        "PreTrainedTokenizerFast")
    return tokenizer


# ------------------------------------------------------------------------------------- alignment
def _boundaries(offsets: Offsets) -> Dict[int, int]:
    """Character position -> index of the token that ends there, for every clean boundary (the next token
    starts at or after it) and the end of the last token."""
    out: Dict[int, int] = {}
    for i, (_, end) in enumerate(offsets):
        if i + 1 < len(offsets) and end > offsets[i + 1][0]:
            continue  # the next token shares a character with this one (a split UTF-8 character)
        out[end] = i
    return out


def align_tokens(student_offsets: Offsets, teacher_offsets: Offsets) -> Tuple[List[int], List[int], List[Tuple[int, int]]]:
    """Spans and edges of two tokenizations of one text, from their character offsets.

    Returns ``(student_span, teacher_span, edges)``: the counted span of each token of each tokenization
    (``0..K−1``, -1 for tokens in none; span ``k`` holds the tokens after common boundary ``c_k`` up to and
    including the one that ends at ``c_{k+1}``), and the edges ``(student position, teacher position)``: the
    tokens that end at a common boundary followed by a token in both (see the module docstring).
    """
    bs, bt = _boundaries(student_offsets), _boundaries(teacher_offsets)
    common = sorted(set(bs) & set(bt))
    s_span, t_span = [-1] * len(student_offsets), [-1] * len(teacher_offsets)
    edges: List[Tuple[int, int]] = []
    for k, (lo, hi) in enumerate(zip(common, common[1:])):
        for i in range(bs[lo] + 1, bs[hi] + 1):
            s_span[i] = k
        for i in range(bt[lo] + 1, bt[hi] + 1):
            t_span[i] = k
    for c in common:
        s, t = bs[c], bt[c]
        if s + 1 < len(student_offsets) and t + 1 < len(teacher_offsets):
            edges.append((s, t))
    return s_span, t_span, edges


def _token_strings(tokenizer: Any) -> Dict[str, int]:
    """Text of each ordinary token -> its id; strings that several ids decode to (e.g. byte pieces of a
    UTF-8 character, which decode to U+FFFD) are left out, as they name no one token."""
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    seen: Dict[str, int] = {}
    ambiguous = set()
    for token, i in tokenizer.get_vocab().items():
        if i in special:
            continue
        text = tokenizer.convert_tokens_to_string([token])
        if not text or "\ufffd" in text or text in ambiguous:
            continue
        if text in seen:
            ambiguous.add(text)
            del seen[text]
            continue
        seen[text] = i
    return seen


def shared_token_ids(teacher_tokenizer: Any, student_tokenizer: Any) -> Tuple[Tensor, Tensor]:
    """``(teacher_ids, student_ids)``: the tokens whose text is the same in both vocabularies, entry ``i`` of
    one naming the same string as entry ``i`` of the other (the end-of-sequence tokens pair up too)."""
    t, s = _token_strings(teacher_tokenizer), _token_strings(student_tokenizer)
    pairs = [(t[text], s[text]) for text in sorted(set(t) & set(s))]
    t_eos, s_eos = getattr(teacher_tokenizer, "eos_token_id", None), getattr(student_tokenizer, "eos_token_id", None)
    if t_eos is not None and s_eos is not None:
        pairs.append((int(t_eos), int(s_eos)))
    if not pairs:
        return torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)
    t_ids, s_ids = zip(*pairs)
    return torch.tensor(t_ids, dtype=torch.long), torch.tensor(s_ids, dtype=torch.long)


# --------------------------------------------------------------------------------------- collate
def _text_of(sample: Sample, key: str, default_eos: bool) -> Tuple[str, bool]:
    if isinstance(sample, str):
        return sample, default_eos
    if isinstance(sample, dict) and isinstance(sample.get(key), str):
        return sample[key], bool(sample.get("eos", default_eos))
    got = sorted(sample) if isinstance(sample, dict) else type(sample).__name__
    raise ValueError(f"a cross-tokenizer sample is a text (str) or a dict with a {key!r} string (and optionally "
                     f"'eos'); got {got}")


class CrossTokenizerCollate:
    """Collate texts into one batch tokenized by both the student's and the teacher's tokenizer.

    Each sample is a string, or a dict with ``text_key`` (and optionally ``eos``: whether the text ends a
    document, default ``append_eos``). Both tokenizers run without special tokens; where ``eos`` holds,
    each appends its own end-of-sequence token, given the offsets ``(n, n + 1)`` past the text's ``n``
    characters, so the two line up as one span. Each tokenization is cut at ``max_length`` tokens
    (``teacher_max_length``, default the same, for the teacher's) and right-padded to the batch's longest.
    See the module docstring for the keys of the batch.
    """

    def __init__(self, teacher_tokenizer: Any, student_tokenizer: Any, max_length: Optional[int] = None,
                 teacher_max_length: Optional[int] = None, append_eos: bool = True, text_key: str = "text"):
        self.teacher_tokenizer = check_fast_tokenizer(teacher_tokenizer, "teacher")
        self.student_tokenizer = check_fast_tokenizer(student_tokenizer, "student")
        for name, value in (("max_length", max_length), ("teacher_max_length", teacher_max_length)):
            if value is not None and (not isinstance(value, int) or value < 2):
                raise ValueError(f"CrossTokenizerCollate: {name}={value!r} must be an integer >= 2 (or None)")
        self.max_length = max_length
        self.teacher_max_length = teacher_max_length if teacher_max_length is not None else max_length
        # An end-of-sequence token only when both have one, so that the two tokenizations still line up.
        self.append_eos = bool(append_eos) and all(getattr(t, "eos_token_id", None) is not None
                                                   for t in (teacher_tokenizer, student_tokenizer))
        self.text_key = text_key

    def encode(self, tokenizer: Any, text: str, eos: bool, limit: Optional[int]) -> Tuple[List[int], List[Tuple[int, int]]]:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]
        if eos:
            ids.append(int(tokenizer.eos_token_id))
            offsets.append((len(text), len(text) + 1))
        if limit is not None:
            ids, offsets = ids[:limit], offsets[:limit]
        return ids, offsets

    def __call__(self, samples: Sequence[Sample]) -> Dict[str, Tensor]:
        rows = []
        for sample in samples:
            text, eos = _text_of(sample, self.text_key, self.append_eos)
            eos = eos and self.append_eos
            s_ids, s_off = self.encode(self.student_tokenizer, text, eos, self.max_length)
            t_ids, t_off = self.encode(self.teacher_tokenizer, text, eos, self.teacher_max_length)
            s_span, t_span, edges = align_tokens(s_off, t_off)
            rows.append((text, s_ids, s_off, t_ids, t_span, s_span, edges))
        width_s = max(1, max(len(r[1]) for r in rows))
        width_t = max(1, max(len(r[3]) for r in rows))
        width_e = max(1, max(len(r[6]) for r in rows))
        b = len(rows)
        out = {
            "input_ids": torch.full((b, width_s), _pad_id(self.student_tokenizer), dtype=torch.long),
            "attention_mask": torch.zeros((b, width_s), dtype=torch.long),
            "labels": torch.full((b, width_s), IGNORE_INDEX, dtype=torch.long),
            "teacher_input_ids": torch.full((b, width_t), _pad_id(self.teacher_tokenizer), dtype=torch.long),
            "teacher_attention_mask": torch.zeros((b, width_t), dtype=torch.long),
            "student_span": torch.full((b, width_s), -1, dtype=torch.long),
            "teacher_span": torch.full((b, width_t), -1, dtype=torch.long),
            "student_edge": torch.full((b, width_e), -1, dtype=torch.long),
            "teacher_edge": torch.full((b, width_e), -1, dtype=torch.long),
            "bytes": torch.zeros(b, dtype=torch.float32),
        }
        for r, (text, s_ids, s_off, t_ids, t_span, s_span, edges) in enumerate(rows):
            n_s, n_t = len(s_ids), len(t_ids)
            out["input_ids"][r, :n_s] = torch.tensor(s_ids, dtype=torch.long)
            out["attention_mask"][r, :n_s] = 1
            out["labels"][r, :n_s] = torch.tensor(s_ids, dtype=torch.long)
            out["teacher_input_ids"][r, :n_t] = torch.tensor(t_ids, dtype=torch.long)
            out["teacher_attention_mask"][r, :n_t] = 1
            out["student_span"][r, :n_s] = torch.tensor(s_span, dtype=torch.long)
            out["teacher_span"][r, :n_t] = torch.tensor(t_span, dtype=torch.long)
            if edges:
                out["student_edge"][r, :len(edges)] = torch.tensor([e[0] for e in edges], dtype=torch.long)
                out["teacher_edge"][r, :len(edges)] = torch.tensor([e[1] for e in edges], dtype=torch.long)
            out["bytes"][r] = float(_predicted_bytes(text, s_off))
        return out


def _pad_id(tokenizer: Any) -> int:
    for attr in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, attr, None)
        if value is not None:
            return int(value)
    return 0


def _predicted_bytes(text: str, offsets: Offsets) -> int:
    """UTF-8 bytes of the text behind tokens 1.. (the predicted ones), one byte for an end-of-sequence token
    (offsets past the text)."""
    if len(offsets) < 2:
        return 0
    start = offsets[0][1]
    end = max(o[1] for o in offsets[1:])
    return len(text[start:min(end, len(text))].encode("utf-8")) + (1 if end > len(text) else 0)


# ----------------------------------------------------------------------------------- data module
class TextRows(Dataset):
    """Rows of text, each ``{"text": ..., "eos": whether it ends its document}``."""

    def __init__(self, rows: List[Dict[str, Any]]):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> Dict[str, Any]:
        return self.rows[i]


def chunk_documents(docs: Sequence[str], tokenizer: Any, max_tokens: int) -> List[Dict[str, Any]]:
    """Each document cut, at token boundaries of ``tokenizer``, into pieces of at most ``max_tokens`` tokens
    (the last piece of a document is marked ``eos``)."""
    rows = []
    for doc in docs:
        offsets = tokenizer(doc, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        cuts = [offsets[i][0] for i in range(0, len(offsets), max_tokens)] if offsets else [0]
        cuts = [0] + [c for c in cuts[1:] if c > 0]
        for j, start in enumerate(cuts):
            stop = cuts[j + 1] if j + 1 < len(cuts) else len(doc)
            rows.append({"text": doc[start:stop], "eos": j + 1 == len(cuts)})
    return rows


class CrossTokenizerTextDataModule(L.LightningDataModule):
    """A document data module's text for a teacher and a student with different tokenizers.

    ``teacher_data`` is a document data module (:class:`~kd_lightning.data.text.PydocTextDataModule`,
    :class:`~kd_lightning.data.text.TextFileDataModule`): its split into training and held-out documents is
    kept, and its tokenizer is the teacher's. The student's tokenizer is ``student_tokenizer`` (a tokenizer
    or a local directory), or one of ``student_tokenizer_kind`` (``"unigram"`` or ``"bpe"``, byte-level) with
    ``student_vocab_size`` tokens trained on the training documents (cached under ``cache_dir`` by content
    hash). Each document is cut into rows of at most ``seq_len − 1`` student tokens (its last row then ends
    with the end-of-sequence token), and :class:`CrossTokenizerCollate` tokenizes each row with both; the
    teacher's tokens of a row are cut at ``seq_len`` as well. Rows never run across documents.

    ``tokenizer`` is the student's (what the module saves and pads with), ``teacher_tokenizer`` the
    teacher's; bits per byte come from the batches' ``bytes``. ``validation_every=N`` holds out every
    ``N``-th *training* document instead (and trains on the others), so that settings can be tuned without
    looking at the held-out documents.
    """

    def __init__(self, teacher_data: Any, student_tokenizer: Any = None, student_tokenizer_kind: str = "unigram",
                 student_vocab_size: int = 1024, seq_len: Optional[int] = None, batch_size: Optional[int] = None,
                 cache_dir: Any = None, num_workers: int = 0, validation_every: Optional[int] = None):
        super().__init__()
        if not hasattr(teacher_data, "documents"):
            raise TypeError(f"teacher_data must be a document data module (PydocTextDataModule, TextFileDataModule); "
                            f"{type(teacher_data).__name__} has no documents()")
        self.teacher_data = teacher_data
        self.seq_len = int(seq_len or teacher_data.seq_len)
        if self.seq_len < 3:
            raise ValueError(f"seq_len={self.seq_len} is too short: a row needs a token to predict and room for the "
                             "end-of-sequence token")
        self.batch_size = int(batch_size or teacher_data.batch_size)
        self.num_workers = int(num_workers)
        self.cache_dir = cache_dir if cache_dir is not None else getattr(teacher_data, "cache_dir", None)
        self.student_kind, self.student_vocab_size = student_tokenizer_kind, int(student_vocab_size)
        self.tokenizer = check_tokenizer(resolve_tokenizer(student_tokenizer)) if student_tokenizer is not None else None
        self.teacher_tokenizer: Any = None
        self.train_set: Optional[TextRows] = None
        self.val_set: Optional[TextRows] = None
        self.bytes_per_token: Optional[float] = None  # bits per byte come from each batch's bytes
        # What the rows are, beyond the tokenizer (kept in the store keys of the models trained on them).
        if validation_every is not None and (not isinstance(validation_every, int) or validation_every < 2):
            raise ValueError(f"validation_every={validation_every!r} must be an integer >= 2 (or None: the data "
                             "module's own held-out documents)")
        self.validation_every = validation_every
        self.key_parts = {"rows": "per_document", "seq_len": self.seq_len, "validation_every": validation_every}

    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_set is not None:
            return
        train_docs, val_docs = documents_with_tokenizer(self.teacher_data)
        self.teacher_tokenizer = self.teacher_data.tokenizer
        if self.tokenizer is None:
            self.tokenizer = train_tokenizer(train_docs, self.student_vocab_size, self.cache_dir, kind=self.student_kind)
        if self.validation_every:  # tuning: held-out documents taken from the training ones (tokenizer unchanged)
            n = self.validation_every
            val_docs = [d for i, d in enumerate(train_docs) if i % n == n // 2]
            train_docs = [d for i, d in enumerate(train_docs) if i % n != n // 2]
        check_fast_tokenizer(self.teacher_tokenizer, "teacher")
        check_fast_tokenizer(self.tokenizer, "student")
        self.train_set = TextRows(chunk_documents(train_docs, self.tokenizer, self.seq_len - 1))
        self.val_set = TextRows(chunk_documents(val_docs, self.tokenizer, self.seq_len - 1))
        if not self.train_set.rows or not self.val_set.rows:
            raise ValueError("the training or the held-out documents hold no text; give the data module more text")

    def prepare_data(self) -> None:
        self.teacher_data.prepare_data()

    def collate(self) -> CrossTokenizerCollate:
        return CrossTokenizerCollate(self.teacher_tokenizer, self.tokenizer, max_length=self.seq_len)

    def train_dataloader(self) -> DataLoader:
        self.setup("fit")
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True, num_workers=self.num_workers,
                          collate_fn=self.collate())

    def val_dataloader(self) -> DataLoader:
        self.setup("validate")
        return DataLoader(self.val_set, batch_size=self.batch_size, shuffle=False, num_workers=self.num_workers,
                          collate_fn=self.collate())

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()


# ------------------------------------------------------------------------------------ the module's side
class TokenizerPair:
    """The teacher's and the student's tokenizers as a cross-tokenizer loss uses them: their names (for
    messages) and the token strings both vocabularies hold (:func:`shared_token_ids`)."""

    def __init__(self, teacher_tokenizer: Any, student_tokenizer: Any):
        self.teacher_name = tokenizer_name(teacher_tokenizer)
        self.student_name = tokenizer_name(student_tokenizer)
        self.teacher_shared_ids, self.student_shared_ids = shared_token_ids(teacher_tokenizer, student_tokenizer)


def cross_tokenizer_pair(loss_name: str, teacher: Any, teacher_tokenizer: Any, student_tokenizer: Any, *,
                         teacher_outputs: bool = False, on_policy: Any = None, fused_head: bool = False) -> TokenizerPair:
    """The checks a module makes before training with a cross-tokenizer loss, and the pair it then uses."""
    if teacher_tokenizer is None or student_tokenizer is None:
        raise ValueError(f"{loss_name} is a cross-tokenizer loss, but the teacher tokenizer is "
                         f"{tokenizer_name(teacher_tokenizer)} and the student tokenizer "
                         f"{tokenizer_name(student_tokenizer)}; pass both: CausalLMDistillationModule(..., "
                         "teacher_tokenizer=..., student_tokenizer=...) (or use TokenKD when they share one tokenizer)")
    check_fast_tokenizer(teacher_tokenizer, "teacher")
    check_fast_tokenizer(student_tokenizer, "student")
    if teacher is None or teacher_outputs or on_policy is not None or fused_head:
        what = ("no teacher" if teacher is None else "teacher_outputs=True" if teacher_outputs
                else "on_policy" if on_policy is not None else "fused_head=True")
        raise ValueError(f"{loss_name} distills a live teacher with its own tokenizer and the student's logits; "
                         f"{what} cannot serve it: pass teacher=<the model> and drop teacher_outputs, on_policy "
                         "and fused_head")
    return TokenizerPair(teacher_tokenizer, student_tokenizer)
