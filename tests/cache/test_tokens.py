"""The LM teacher-signal cache: what it stores, what it refuses, what it rebuilds, and training on it."""
import functools
import json
import logging

import lightning as L
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from kd_lightning import CausalLMDistillationModule
from kd_lightning.cache import TeacherOutputsError
from kd_lightning.batch import TOPK_KEYS
from kd_lightning.cache.tokens import TeacherOutputsTokenDataModule, TokenTeacherOutputs, TopKCollate
from kd_lightning.losses import TokenKD
from kd_lightning.losses.functional import token_divergence

from lm.helpers import TinyLM, ragged_batch, rows

VOCAB = 13
LENGTHS = [12, 2, 9, 3, 12, 5, 1, 7]


class Vocab:
    """The part of a tokenizer the cache reads: its vocabulary (for the fingerprint)."""

    def __init__(self, size: int = VOCAB, salt: str = ""):
        self.vocab = {f"{salt}t{i}": i for i in range(size)}

    def get_vocab(self):
        return dict(self.vocab)


def data(seed: int = 0):
    return rows(ragged_batch(LENGTHS, vocab=VOCAB, seed=seed))


def build(tmp_path, k=4, temperature=1.0, teacher=None, tokenizer=None, **kw):
    teacher = teacher or TinyLM(seed=1)
    return TokenTeacherOutputs.build(teacher, data(), tmp_path / "cache", tokenizer=tokenizer or Vocab(), top_k=k,
                                temperature=temperature, batch_size=3, **kw)


# ------------------------------------------------------------------------------------- contents
@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_stores_top_k_of_each_real_token_at_its_temperature(tmp_path, temperature):
    teacher = TinyLM(seed=1)
    cache = build(tmp_path, k=4, temperature=temperature, teacher=teacher)
    assert len(cache) == len(LENGTHS) and cache.num_tokens == sum(LENGTHS)
    batch = ragged_batch(LENGTHS, vocab=VOCAB)
    with torch.no_grad():
        logp = torch.log_softmax(teacher(batch["input_ids"]) / temperature, -1)
    for i, n in enumerate(LENGTHS):
        ids, lp, rest = cache.sequence(i)
        assert ids.dtype == torch.int32 and ids.shape == (n, 4) and lp.shape == (n, 4) and rest.shape == (n,)
        values, indices = logp[i, :n].topk(4, -1)
        assert torch.equal(ids.long(), indices)
        torch.testing.assert_close(lp, values.half().float())  # stored in fp16
        torch.testing.assert_close(rest, 1 - values.exp().sum(-1), atol=1e-6, rtol=0)  # fp32, before rounding
    assert cache.temperature == temperature and cache.top_k == 4 and cache.vocab_size == VOCAB
    # 6k + 4 bytes per token, plus the offsets and the four .npy headers.
    payload = sum(LENGTHS) * (6 * 4 + 4) + 8 * (len(LENGTHS) + 1)
    assert payload < cache.nbytes() <= payload + 4 * 128


def test_top_k_above_the_vocabulary_and_left_padding_are_refused(tmp_path):
    with pytest.raises(ValueError, match="top_k=14 exceeds the teacher's vocabulary of 13"):
        build(tmp_path, k=14)
    left = ragged_batch([3, 5], vocab=VOCAB)
    left["attention_mask"] = left["attention_mask"].flip(-1)
    with pytest.raises(ValueError, match="right-padded"):
        TokenTeacherOutputs.build(TinyLM(seed=1), rows(left), tmp_path / "left", tokenizer=Vocab(), top_k=2)
    assert not (tmp_path / "left" / "meta.json").exists()


# ------------------------------------------------------------------------------ refused, never used
@pytest.mark.parametrize("change, message", [
    (dict(tokenizer=Vocab(salt="other")), "another tokenizer"),
    (dict(teacher=TinyLM(seed=7)), "another teacher"),
    (dict(temperature=2.0), "taken at T=1.0, not T=2.0"),
    (dict(top_k=8), "keeps k=4, not 8"),
    (dict(count=3), "holds 8 sequences but the data set has 3"),
])
def test_open_refuses_a_cache_made_for_something_else(tmp_path, change, message):
    build(tmp_path, k=4)
    args = dict(teacher=TinyLM(seed=1), tokenizer=Vocab(), temperature=1.0, top_k=4, count=len(LENGTHS))
    TokenTeacherOutputs.open(tmp_path / "cache", **args)  # the matching one opens
    args.update(change)
    with pytest.raises(TeacherOutputsError, match=message):
        TokenTeacherOutputs.open(tmp_path / "cache", **args)


def flip_one_bit(path, offset_from_end=3):
    raw = bytearray(path.read_bytes())
    raw[-offset_from_end] ^= 0x10
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("name", ["topk_ids.npy", "topk_logprobs.npy", "rest_mass.npy", "offsets.npy"])
def test_a_flipped_bit_in_any_array_is_caught_and_rebuilt(tmp_path, caplog, name):
    teacher, tok = TinyLM(seed=1), Vocab()
    first = TokenTeacherOutputs.get_or_build(teacher, data(), tmp_path, tokenizer=tok, top_k=4, batch_size=3)
    good = [t.clone() for t in first.sequence(7)]
    flip_one_bit(first.directory / name)
    with pytest.raises(TeacherOutputsError, match=f"{name}.*fails its checksum"):
        TokenTeacherOutputs.open(first.directory)
    with pytest.raises(TeacherOutputsError, match="fails its checksum"):
        TokenTeacherOutputs.get_or_build(teacher, data(), tmp_path, tokenizer=tok, top_k=4, rebuild_damaged=False)
    with caplog.at_level(logging.WARNING):
        again = TokenTeacherOutputs.get_or_build(teacher, data(), tmp_path, tokenizer=tok, top_k=4, batch_size=3)
    assert "rebuilding damaged stored teacher outputs" in caplog.text and name in caplog.text
    assert again.directory == first.directory
    for a, b in zip(again.sequence(7), good):
        assert torch.equal(a, b)


def test_truncated_array_or_missing_meta_is_never_trusted(tmp_path):
    cache = build(tmp_path)
    path = cache.directory / "topk_logprobs.npy"
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(TeacherOutputsError, match="topk_logprobs.npy.*truncated"):
        TokenTeacherOutputs.open(cache.directory, verify=False)
    (cache.directory / "meta.json").unlink()  # what an interrupted build leaves
    with pytest.raises(TeacherOutputsError, match="no stored teacher outputs"):
        TokenTeacherOutputs.open(cache.directory)


def test_key_covers_teacher_tokenizer_k_and_temperature(tmp_path):
    base = dict(tokenizer=Vocab(), top_k=4, temperature=1.0, batch_size=4)
    dirs = {TokenTeacherOutputs.get_or_build(TinyLM(seed=1), data(), tmp_path, **base).directory}
    for teacher, change in [(TinyLM(seed=2), {}), (TinyLM(seed=1), dict(tokenizer=Vocab(salt="x"))),
                            (TinyLM(seed=1), dict(top_k=5)), (TinyLM(seed=1), dict(temperature=2.0))]:
        dirs.add(TokenTeacherOutputs.get_or_build(teacher, data(), tmp_path, **{**base, **change}).directory)
    assert len(dirs) == 5
    meta = json.loads((sorted(dirs)[0] / "meta.json").read_text())
    assert {"teacher_sha256", "tokenizer_sha256", "data_sha256", "temperature", "top_k"} <= set(meta)


# ----------------------------------------------------------------------------------- batches
def test_collate_pads_each_sequence_signal_to_the_batch(tmp_path):
    cache = build(tmp_path, k=3)
    from kd_lightning.cache.tokens import TeacherOutputsTokenDataset

    loader = DataLoader(TeacherOutputsTokenDataset(data(), cache), batch_size=4, collate_fn=TopKCollate())
    batch = next(iter(loader))
    assert set(TOPK_KEYS) <= set(batch)
    assert batch["teacher_topk_ids"].shape == (4, 12, 3) and batch["teacher_rest"].shape == (4, 12)
    ids, lp, rest = cache.sequence(1)  # 2 tokens; the rest of its row is padding
    assert torch.equal(batch["teacher_topk_ids"][1, :2], ids) and not batch["teacher_topk_ids"][1, 2:].any()
    assert torch.equal(batch["teacher_topk_logprobs"][1, :2], lp)
    assert batch["teacher_temperature"].tolist() == [1.0] * 4


# ------------------------------------------------------------------------------- training on it
class Data(L.LightningDataModule):
    def __init__(self):
        super().__init__()
        self.tokenizer = Vocab()

    def train_dataloader(self):
        return DataLoader(data(), batch_size=4, shuffle=False)

    def val_dataloader(self):
        return DataLoader(data(), batch_size=4)


def _step_loss(module, batch):
    module.train()
    return float(module.training_step(batch, 0).detach())


@pytest.mark.parametrize("tail", [False, True])
def test_k_equal_to_vocabulary_trains_on_the_dense_forward_kl(tmp_path, tail):
    """With k = V the stored signal is the whole distribution: the step's loss is the online teacher's
    forward KL (up to the fp16 rounding of the stored log-probabilities)."""
    teacher, student = TinyLM(seed=1), TinyLM(seed=2)
    dm = TeacherOutputsTokenDataModule(Data(), teacher, tmp_path, top_k=VOCAB, temperature=2.0, batch_size=3)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    loss = TokenKD(temperature=2.0, topk_tail=tail)
    cached = CachedLMModule = CausalLMDistillationModule(student, None, loss, teacher_outputs=True)
    online = CausalLMDistillationModule(student, teacher, TokenKD(temperature=2.0))
    plain = {k: v for k, v in batch.items() if k not in TOPK_KEYS}
    assert _step_loss(cached, batch) == pytest.approx(_step_loss(online, plain), rel=2e-3)
    with torch.no_grad():
        mask = batch["attention_mask"][:, 1:].bool()
        hand = token_divergence(student(batch["input_ids"])[:, :-1], teacher(batch["input_ids"])[:, :-1], mask,
                                temperature=2.0)
    assert _step_loss(CachedLMModule, batch) == pytest.approx(float(hand), rel=2e-3)


def test_small_k_trains_the_student_toward_the_teacher(tmp_path):
    teacher, student = TinyLM(seed=1), TinyLM(seed=2)
    dm = TeacherOutputsTokenDataModule(Data(), teacher, tmp_path, top_k=3)
    module = CausalLMDistillationModule(student, None, TokenKD(), teacher_outputs=True,
                                        optimizer=functools.partial(torch.optim.Adam, lr=0.05))
    batch = {k: v for k, v in rows_batch().items()}
    with torch.no_grad():
        before = float(token_divergence(student(batch["input_ids"]), teacher(batch["input_ids"])))
    L.Trainer(max_steps=30, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False).fit(module, datamodule=dm)
    with torch.no_grad():
        after = float(token_divergence(student(batch["input_ids"]), teacher(batch["input_ids"])))
    assert after < 0.5 * before  # it learned the teacher's distribution from 3 ids per token


def rows_batch():
    return ragged_batch(LENGTHS, vocab=VOCAB)


def test_module_refuses_what_the_stored_signal_cannot_serve(tmp_path):
    student = TinyLM(seed=2)
    with pytest.raises(ValueError, match="pass teacher=None"):
        CausalLMDistillationModule(student, TinyLM(seed=1), TokenKD(), teacher_outputs=True)
    with pytest.raises(ValueError, match="divergence='reverse'"):
        CausalLMDistillationModule(student, None, TokenKD(divergence="reverse"), teacher_outputs=True)
    module = CausalLMDistillationModule(student, None, TokenKD(), teacher_outputs=True)
    with pytest.raises(ValueError, match="has no teacher_topk_ids.*TeacherOutputsTokenDataModule"):
        module.training_step(rows_batch(), 0)
    dm = TeacherOutputsTokenDataModule(Data(), TinyLM(seed=1), tmp_path, top_k=3, temperature=4.0)
    dm.setup("fit")
    with pytest.raises(ValueError, match="taken at T=4.0 but the loss uses T=1.0"):
        module.training_step(next(iter(dm.train_dataloader())), 0)
    small = CausalLMDistillationModule(TinyLM(vocab=5, seed=2), None, TokenKD(), teacher_outputs=True)
    batch = next(iter(dm.train_dataloader()))
    batch = {**batch, "input_ids": batch["input_ids"] % 5, "labels": batch["labels"].clamp(max=4),
             "teacher_temperature": torch.ones(4)}
    with pytest.raises(ValueError, match="outside the student's vocabulary of 5"):
        small.training_step(batch, 0)


def test_cache_arrays_are_plain_npy_files(tmp_path):
    """No pickles: every array loads with numpy's allow_pickle=False (safe to share between machines)."""
    cache = build(tmp_path)
    for name in ("topk_ids.npy", "topk_logprobs.npy", "rest_mass.npy", "offsets.npy"):
        arr = np.load(cache.directory / name, allow_pickle=False)
        assert arr.dtype == {"topk_ids.npy": np.int32, "topk_logprobs.npy": np.float16,
                             "rest_mass.npy": np.float32, "offsets.npy": np.int64}[name]


def test_prompt_response_batches_of_any_length_carry_their_own_rows(tmp_path):
    """Variable-length prompt/response data (padded per batch by its own collate): each sequence's stored
    rows land on its real tokens, and a file with other responses gets another cache."""
    pytest.importorskip("tokenizers")
    from kd_lightning.data.text import PromptResponseDataModule, train_bpe_tokenizer

    def module(path, responses):
        path.write_text("".join(json.dumps({"prompt": f"Q{i} " * (1 + i % 4), "response": r}) + "\n"
                                for i, r in enumerate(responses)))
        return PromptResponseDataModule(path, tokenizer=tok, batch_size=4, seq_len=24, val_fraction=0.25)

    tok = train_bpe_tokenizer(["Q1 Q2 the answer is yes no maybe " * 20], vocab_size=280)
    teacher = TinyLM(vocab=len(tok), seed=1)
    dm = TeacherOutputsTokenDataModule(module(tmp_path / "a.jsonl", [f"the answer is {'yes ' * (i % 5)}" for i in range(12)]),
                               teacher, tmp_path / "cache", top_k=5)
    dm.setup("fit")
    cache = dm.outputs
    seen = 0
    for batch in DataLoader(dm.train_dataloader().dataset, batch_size=4, collate_fn=dm.train_dataloader().collate_fn):
        lengths = batch["attention_mask"].sum(-1)
        assert batch["teacher_topk_ids"].shape[:2] == batch["input_ids"].shape
        for row, n in enumerate(lengths.tolist()):
            ids, lp, _ = cache.sequence(seen + row)
            assert ids.shape[0] == n and torch.equal(batch["teacher_topk_ids"][row, :n], ids)
            assert not batch["teacher_topk_logprobs"][row, n:].any()
        seen += len(lengths)
    assert seen == len(cache) == 9
    other = TeacherOutputsTokenDataModule(module(tmp_path / "b.jsonl", [f"no {'maybe ' * (i % 3)}" for i in range(12)]),
                                  teacher, tmp_path / "cache", top_k=5)
    other.setup("fit")
    assert other.outputs.directory != cache.directory
