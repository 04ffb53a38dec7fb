"""Two tokenizers over one text (kd_lightning/lm/xtok.py) and the module's cross-tokenizer path."""
import functools

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from kd_lightning import CausalLMDistillationModule
from kd_lightning.data.text import train_tokenizer
from kd_lightning.lm.xtok import CrossTokenizerCollate, align_tokens, shared_token_ids
from kd_lightning.losses import SpanAlign, TokenKD, ULD
from kd_lightning.models.lm import build_causal_lm

TEXT = ["The for statement iterates over the items of a sequence, in order. ",
        "An exception is raised when an error occurs; handlers catch it — café. ",
        "A list comprehension builds a list from an iterable and a condition. "] * 8


@pytest.fixture(scope="module")
def tokenizers():
    return train_tokenizer(TEXT, 300, kind="bpe"), train_tokenizer(TEXT, 280, kind="unigram")


def test_align_tokens_by_hand():
    # "abcde": student "a" "b" "cde", teacher "ab" "cd" "e". Common boundaries 2 and 5: one counted span "cde"
    # (student token 2, teacher tokens 1-2); the piece "ab" holds each row's first token and is not counted.
    s_span, t_span, edges = align_tokens([(0, 1), (1, 2), (2, 5)], [(0, 2), (2, 4), (4, 5)])
    assert (s_span, t_span, edges) == ([-1, -1, 0], [-1, 0, 0], [(1, 0)])


def test_align_tokens_never_cuts_between_tokens_that_share_a_character():
    # Two byte tokens of one UTF-8 character share its offsets: no boundary between them.
    s = [(0, 1), (1, 2), (1, 2), (2, 3)]
    t = [(0, 1), (1, 2), (2, 3)]
    s_span, t_span, edges = align_tokens(s, t)
    assert s_span == [-1, 0, 0, 1] and t_span == [-1, 0, 1]
    assert edges == [(0, 0), (2, 1)]


def test_collate_spans_cover_the_same_text_in_both_tokenizations(tokenizers):
    teacher_tok, student_tok = tokenizers
    collate = CrossTokenizerCollate(teacher_tok, student_tok, max_length=64)
    texts = [TEXT[0], {"text": TEXT[1], "eos": False}]
    batch = collate(texts)
    assert batch["input_ids"].shape[0] == 2 and batch["teacher_input_ids"].shape[0] == 2
    for r, sample in enumerate(texts):
        text = sample if isinstance(sample, str) else sample["text"]
        s_ids = batch["input_ids"][r][batch["attention_mask"][r].bool()].tolist()
        t_ids = batch["teacher_input_ids"][r][batch["teacher_attention_mask"][r].bool()].tolist()
        assert student_tok.decode(s_ids, skip_special_tokens=True) == text
        assert (s_ids[-1] == student_tok.eos_token_id) == (r == 0)
        spans_s, spans_t = batch["student_span"][r], batch["teacher_span"][r]
        k = int(spans_s.max()) + 1
        assert k > 3 and int(spans_t.max()) + 1 == k
        for span in range(k):
            s_text = student_tok.decode([i for i, x in zip(s_ids, spans_s.tolist()) if x == span])
            t_text = teacher_tok.decode([i for i, x in zip(t_ids, spans_t.tolist()) if x == span])
            assert s_text == t_text, (span, s_text, t_text)
        # At each edge both next tokens start the same text: the decoded prefixes up to the edge agree.
        for s_pos, t_pos in zip(batch["student_edge"][r].tolist(), batch["teacher_edge"][r].tolist()):
            if s_pos < 0:
                continue
            assert student_tok.decode(s_ids[:s_pos + 1]) == teacher_tok.decode(t_ids[:t_pos + 1])
    # Bytes the student predicts: everything after its first token, one byte for the end-of-sequence token.
    first = student_tok.decode(batch["input_ids"][0, :1].tolist())
    assert float(batch["bytes"][0]) == len(TEXT[0].encode()) - len(first.encode()) + 1


def test_shared_token_ids_name_the_same_strings(tokenizers):
    teacher_tok, student_tok = tokenizers
    t_ids, s_ids = shared_token_ids(teacher_tok, student_tok)
    assert len(t_ids) > 50
    for t, s in zip(t_ids.tolist()[:-1], s_ids.tolist()[:-1]):
        assert teacher_tok.decode([t]) == student_tok.decode([s])
    assert (t_ids[-1], s_ids[-1]) == (teacher_tok.eos_token_id, student_tok.eos_token_id)


def tiny_lm(tokenizer, seed):
    torch.manual_seed(seed)
    return build_causal_lm("llama", vocab_size=len(tokenizer), hidden_size=16, num_layers=1, num_heads=2,
                           intermediate_size=32, max_position_embeddings=64)


def test_bad_tokenizer_pairs_are_one_line_before_training(tokenizers):
    teacher_tok, student_tok = tokenizers
    teacher, student = tiny_lm(teacher_tok, 0), tiny_lm(student_tok, 1)
    with pytest.raises(ValueError, match=r"SpanAlign is a cross-tokenizer loss, but the teacher tokenizer is None "
                                         r"and the student tokenizer a Unigram tokenizer .*pass both"):
        CausalLMDistillationModule(student, teacher, loss=SpanAlign(), student_tokenizer=student_tok)
    with pytest.raises(ValueError, match=r"teacher tokenizer a BPE tokenizer of \d+ tokens and student tokenizer a "
                                         r"Unigram tokenizer .* differ.*use a cross-tokenizer loss, loss=SpanAlign\(\)"):
        CausalLMDistillationModule(student, teacher, loss=TokenKD(), teacher_tokenizer=teacher_tok,
                                   student_tokenizer=student_tok)
    with pytest.raises(ValueError, match=r"ULD distills a live teacher.*no teacher"):
        CausalLMDistillationModule(student, None, loss=ULD(), teacher_tokenizer=teacher_tok,
                                   student_tokenizer=student_tok)
    module = CausalLMDistillationModule(student, teacher, loss=ULD(), teacher_tokenizer=teacher_tok,
                                        student_tokenizer=student_tok)
    plain = {"input_ids": torch.ones(1, 4, dtype=torch.long)}
    with pytest.raises(ValueError, match=r"ULD needs both tokenizations.*CrossTokenizerCollate"):
        module.training_step(plain, 0)


@pytest.mark.parametrize("loss", [SpanAlign(), ULD(uld_weight=2.0)], ids=["span_align", "uld"])
def test_fit_trains_the_student_only_and_reports_bits_per_byte(tokenizers, loss):
    teacher_tok, student_tok = tokenizers
    teacher, student = tiny_lm(teacher_tok, 0), tiny_lm(student_tok, 1)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student_before = {k: v.clone() for k, v in student.state_dict().items()}
    collate = CrossTokenizerCollate(teacher_tok, student_tok, max_length=48)
    loader = DataLoader(TEXT, batch_size=4, collate_fn=collate)
    module = CausalLMDistillationModule(student, teacher, loss=loss, teacher_tokenizer=teacher_tok,
                                        student_tokenizer=student_tok,
                                        optimizer=functools.partial(torch.optim.AdamW, lr=1e-2))
    trainer = L.Trainer(max_steps=3, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        limit_val_batches=2)
    trainer.fit(module, train_dataloaders=loader)
    metrics = {**trainer.callback_metrics, **trainer.validate(module, loader, verbose=False)[0]}
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert any(not torch.equal(student_before[k], v) for k, v in student.state_dict().items())
    assert 0 < float(metrics["val/bpb"]) < 20 and torch.isfinite(torch.as_tensor(metrics["train/loss"]))
    assert "val/teacher_ppl" not in metrics  # the teacher's metrics belong to its own tokens
    terms = {"span", "next", "kl", "uld"} if isinstance(loss, SpanAlign) else {"uld"}
    assert all(f"train/{t}" in metrics for t in terms | {"ce"})


def test_data_module_rows_keep_the_split_and_can_hold_out_training_documents_for_tuning(tmp_path):
    from kd_lightning.data.text import TextFileDataModule
    from kd_lightning.lm import CrossTokenizerTextDataModule

    for i in range(10):
        (tmp_path / f"doc{i}.txt").write_text(f"Document {i}. " + TEXT[i % 3] * 3)
    teacher_data = TextFileDataModule(tmp_path, seq_len=32, batch_size=4, vocab_size=300, val_every=5)
    data = CrossTokenizerTextDataModule(teacher_data, student_tokenizer_kind="unigram", student_vocab_size=280)
    data.setup()
    train_docs, val_docs = teacher_data.documents()
    joined = lambda rows: "".join(r["text"] for r in rows)  # noqa: E731
    assert joined(data.val_set.rows) == "".join(val_docs) and joined(data.train_set.rows) == "".join(train_docs)
    assert sum(r["eos"] for r in data.val_set.rows) == len(val_docs)
    batch = next(iter(data.train_dataloader()))
    assert batch["input_ids"].shape[1] <= 32 and batch["teacher_input_ids"].shape[1] <= 32
    assert len(data.tokenizer) == 280 and len(data.teacher_tokenizer) == 300
    tuning = CrossTokenizerTextDataModule(teacher_data, student_tokenizer_kind="unigram", student_vocab_size=280,
                                          validation_every=4)
    tuning.setup()
    assert joined(tuning.val_set.rows) == "".join(train_docs[2::4])  # training documents, never the held-out ones
    assert tuning.key_parts != data.key_parts
