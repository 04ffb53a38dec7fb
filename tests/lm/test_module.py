"""CausalLMDistillationModule: frozen teacher, vocabulary checks, step-exact reduction, metrics, export."""
import functools
import math

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from kd_lightning import CausalLMDistillationModule
from kd_lightning.losses import TokenKD
from kd_lightning.losses.functional import token_divergence

from .helpers import ObjectLM, TinyLM, ragged_batch, rows

LENGTHS = [12, 2, 9, 3, 12, 5, 1, 7]  # very different lengths; the 1-token one has no next-token position


def _trainer(**kw):
    base = dict(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0)
    base.update(kw)
    return L.Trainer(**base)


def _loader(batch, batch_size):
    return DataLoader(rows(batch), batch_size=batch_size, shuffle=False)


# ------------------------------------------------------------------------------ the frozen teacher
def test_teacher_frozen_eval_not_in_optimizer_not_in_checkpoint(tmp_path):
    teacher, student = TinyLM(seed=1), TinyLM(seed=2)
    module = CausalLMDistillationModule(student, teacher, TokenKD(ce_weight=0.5),
                                        optimizer=functools.partial(torch.optim.SGD, lr=0.1))
    assert all(not p.requires_grad for p in module.teacher.parameters())
    module.train()
    assert not module.teacher.training and all(not m.training for m in module.teacher.modules())
    assert student.training
    opt = module.configure_optimizers()
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    assert in_opt == {id(p) for p in student.parameters()}
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    trainer = _trainer(max_steps=3, default_root_dir=tmp_path)
    trainer.fit(module, _loader(ragged_batch(LENGTHS), 4))
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    path = tmp_path / "m.ckpt"
    trainer.save_checkpoint(path)
    state = torch.load(path, weights_only=False)["state_dict"]
    assert state and not any(k.startswith("teacher.") for k in state)
    assert any(k.startswith("student.") for k in state)
    # strict loading refills the teacher from the live one
    fresh = CausalLMDistillationModule.load_from_checkpoint(path, student=TinyLM(seed=9), teacher=TinyLM(seed=1))
    for k, v in student.state_dict().items():
        assert torch.equal(fresh.student.state_dict()[k], v)


# ------------------------------------------------------------------------------ vocabulary checks
def test_vocab_mismatch_names_both_sizes_before_any_step():
    student = TinyLM(vocab=15, seed=2)
    before = [p.detach().clone() for p in student.parameters()]
    module = CausalLMDistillationModule(student, TinyLM(vocab=13, seed=1))
    with pytest.raises(ValueError, match=r"teacher has 13 logits per token and the student 15.*vocab_alignment"):
        _trainer(max_steps=2).fit(module, _loader(ragged_batch(LENGTHS), 4))
    assert all(torch.equal(a, b) for a, b in zip(before, student.parameters()))


def test_different_tokenizers_rejected_at_construction():
    class Tok:
        def __init__(self, name, vocab):
            self.name_or_path, self.vocab = name, vocab

        def get_vocab(self):
            return dict(self.vocab)

    with pytest.raises(ValueError, match=r"teacher tokenizer 'big-tok' \(3 tokens\) and student tokenizer 'small-tok' "
                                         r"\(2 tokens\) differ"):
        CausalLMDistillationModule(TinyLM(), TinyLM(), teacher_tokenizer=Tok("big-tok", {"a": 0, "b": 1, "c": 2}),
                                   student_tokenizer=Tok("small-tok", {"a": 0, "b": 1}))


def test_truncate_compares_the_shared_rows():
    teacher, student = TinyLM(vocab=16, seed=1), TinyLM(vocab=13, seed=2)
    batch = ragged_batch(LENGTHS)  # token ids < 13
    module = CausalLMDistillationModule(student, teacher, TokenKD(divergence="reverse"), vocab_alignment="truncate")
    loss = module.training_step(batch, 0)  # no trainer: one micro-batch, one rank
    mask = batch["attention_mask"][:, 1:].bool()
    expected = token_divergence(student(batch["input_ids"])[:, :-1], teacher(batch["input_ids"])[:, :-1, :13], mask,
                                divergence="reverse")
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    strict = CausalLMDistillationModule(TinyLM(vocab=13), TinyLM(vocab=16))
    with pytest.raises(ValueError, match="16 logits per token and the student 13"):
        strict.training_step(batch, 0)


# ------------------------------------------------------------------------------ model call styles
@pytest.mark.parametrize("kind", ["tensor", "tuple", "object"])
def test_plain_module_language_models(kind):
    make = (lambda s: ObjectLM(seed=s)) if kind == "object" else (lambda s: TinyLM(out=kind, seed=s))
    module = CausalLMDistillationModule(make(2), make(1), TokenKD(ce_weight=1.0, kd_weight=1.0))
    before = [p.detach().clone() for p in module.student.parameters()]
    trainer = _trainer(max_steps=2, limit_val_batches=1)
    trainer.fit(module, _loader(ragged_batch(LENGTHS), 4), _loader(ragged_batch(LENGTHS, seed=3), 8))
    assert any(not torch.equal(a, b) for a, b in zip(before, module.student.parameters()))
    assert math.isfinite(float(trainer.callback_metrics["val/ppl"]))


def test_hugging_face_models():
    pytest.importorskip("transformers")
    from kd_lightning.models.lm import build_causal_lm

    kw = dict(vocab_size=13, num_heads=2, intermediate_size=16, max_position_embeddings=12)
    teacher = build_causal_lm("llama", hidden_size=16, num_layers=2, **kw)
    student = build_causal_lm("gpt2", hidden_size=8, num_layers=1, **kw)
    module = CausalLMDistillationModule(student, teacher, TokenKD(divergence="jsd", beta=0.3))
    trainer = _trainer(max_steps=2, limit_val_batches=1)
    trainer.fit(module, _loader(ragged_batch(LENGTHS), 4), _loader(ragged_batch(LENGTHS, seed=3), 8))
    assert float(trainer.callback_metrics["val/teacher_ppl"]) == pytest.approx(
        math.exp(float(trainer.callback_metrics["val/teacher_ce"])), rel=1e-5)


# ------------------------------------------------------------------- reduction over an optimizer step
LOSS = dict(divergence="jsd", beta=0.3, ce_weight=0.5, kd_weight=1.0)


def _reference_gradients():
    """Σ over all tokens of the 8 sequences / N, by plain autograd on the full batch."""
    batch = ragged_batch(LENGTHS)
    teacher, student = TinyLM(seed=1).double(), TinyLM(seed=2).double()
    loss = TokenKD(**LOSS)
    n = loss.count_mask(batch["labels"], batch["attention_mask"]).sum()
    with torch.no_grad():
        t = teacher(batch["input_ids"])
    out = loss(student(batch["input_ids"]), t, batch["labels"], batch["attention_mask"], num_tokens=n)
    grads = torch.autograd.grad(out["loss"], list(student.parameters()))
    return dict(zip([k for k, _ in student.named_parameters()], grads))


def _lightning_gradients(batch_size, accumulate=1, **trainer_kw):
    """One SGD step with lr = 1: the parameter change is minus the gradient the optimizer saw."""
    student = TinyLM(seed=2)
    module = CausalLMDistillationModule(student, TinyLM(seed=1), TokenKD(**LOSS),
                                        optimizer=functools.partial(torch.optim.SGD, lr=1.0))
    start = {k: v.detach().clone().double() for k, v in student.named_parameters()}
    trainer = _trainer(max_steps=1, accumulate_grad_batches=accumulate, precision="64-true", **trainer_kw)
    trainer.fit(module, _loader(ragged_batch(LENGTHS), batch_size))
    return {k: start[k] - v.detach() for k, v in module.student.named_parameters()}


def _assert_same(a, b, atol=1e-6):
    for k in a:
        assert torch.allclose(a[k], b[k], atol=atol, rtol=0), (k, (a[k] - b[k]).abs().max())


def test_gradients_do_not_depend_on_micro_batching():
    ref = _reference_gradients()
    whole = _lightning_gradients(batch_size=8)
    micro = _lightning_gradients(batch_size=2, accumulate=4)
    _assert_same(whole, ref)
    _assert_same(micro, ref)
    # The test has teeth: averaging each micro-batch's own token mean gives a different gradient.
    batch = ragged_batch(LENGTHS)
    teacher, student = TinyLM(seed=1).double(), TinyLM(seed=2).double()
    loss = TokenKD(**LOSS)
    naive = 0
    for i in range(0, 8, 2):
        part = {k: v[i:i + 2] for k, v in batch.items()}
        naive = naive + loss(student(part["input_ids"]), teacher(part["input_ids"]).detach(), part["labels"],
                             part["attention_mask"])["loss"] / 4
    naive_grads = torch.autograd.grad(naive, list(student.parameters()))
    assert max((g - ref[k]).abs().max().item() for (k, _), g in zip(student.named_parameters(), naive_grads)) > 1e-3


@pytest.mark.slow
def test_gradients_same_under_ddp_spawn_two_processes():
    ref = _reference_gradients()
    ddp = _lightning_gradients(batch_size=4, devices=2, strategy="ddp_spawn")
    _assert_same(ddp, ref)
    ddp_accum = _lightning_gradients(batch_size=2, accumulate=2, devices=2, strategy="ddp_spawn")
    _assert_same(ddp_accum, ref)


def test_later_steps_use_their_own_token_count():
    # Two optimizer steps of different token counts: the second step's gradient is its own mean too.
    batch = ragged_batch(LENGTHS)
    first, second = {k: v[:4] for k, v in batch.items()}, {k: v[4:] for k, v in batch.items()}
    student, teacher = TinyLM(seed=2), TinyLM(seed=1)
    module = CausalLMDistillationModule(student, teacher, TokenKD(**LOSS),
                                        optimizer=functools.partial(torch.optim.SGD, lr=1.0))
    trainer = _trainer(max_steps=2, accumulate_grad_batches=2, precision="64-true")
    trainer.fit(module, DataLoader(rows(first) + rows(second), batch_size=2, shuffle=False))
    # replay: step 1 on `first` with plain autograd, then step 2 on `second`
    ref_s, ref_t = TinyLM(seed=2).double(), TinyLM(seed=1).double()
    loss = TokenKD(**LOSS)
    for part in (first, second):
        n = loss.count_mask(part["labels"], part["attention_mask"]).sum()
        out = loss(ref_s(part["input_ids"]), ref_t(part["input_ids"]).detach(), part["labels"],
                   part["attention_mask"], num_tokens=n)
        grads = torch.autograd.grad(out["loss"], list(ref_s.parameters()))
        with torch.no_grad():
            for p, g in zip(ref_s.parameters(), grads):
                p -= g
    for a, b in zip(module.student.parameters(), ref_s.parameters()):
        assert torch.allclose(a, b, atol=1e-6, rtol=0)


# ------------------------------------------------------------------------------------- metrics
def test_validation_metrics_match_hand_computation():
    teacher, student = TinyLM(seed=1), TinyLM(seed=2)
    module = CausalLMDistillationModule(student, teacher, TokenKD())
    val = ragged_batch(LENGTHS, seed=5)
    nbytes = torch.tensor([40, 3, 30, 9, 41, 15, 2, 22])
    val["bytes"] = nbytes
    trainer = _trainer(limit_val_batches=1.0)
    metrics = trainer.validate(module, DataLoader(rows(val), batch_size=3, shuffle=False), verbose=False)[0]
    with torch.no_grad():
        s, t = student(val["input_ids"])[:, :-1], teacher(val["input_ids"])[:, :-1]
    y = val["labels"][:, 1:]
    keep = y != -100
    ce_sum = torch.nn.functional.cross_entropy(s[keep], y[keep], reduction="sum")
    t_sum = torch.nn.functional.cross_entropy(t[keep], y[keep], reduction="sum")
    n = keep.sum()
    assert metrics["val/ce"] == pytest.approx((ce_sum / n).item(), rel=1e-5)
    assert metrics["val/ppl"] == pytest.approx(math.exp(metrics["val/ce"]), rel=1e-5)
    assert metrics["val/teacher_ppl"] == pytest.approx(math.exp((t_sum / n).item()), rel=1e-5)
    assert metrics["val/agreement"] == pytest.approx(
        (s[keep].argmax(-1) == t[keep].argmax(-1)).float().mean().item(), rel=1e-6)
    assert metrics["val/bpb"] == pytest.approx(ce_sum.item() / math.log(2) / nbytes.sum().item(), rel=1e-5)
    kd_mask = val["attention_mask"][:, 1:].bool()
    assert metrics["val/kd"] == pytest.approx(token_divergence(s, t, kd_mask).item(), rel=1e-5)


def test_training_logs_terms_and_throughput():
    module = CausalLMDistillationModule(TinyLM(seed=2), TinyLM(seed=1), TokenKD(ce_weight=0.5, kd_weight=1.0))
    trainer = _trainer(max_steps=2)
    trainer.fit(module, _loader(ragged_batch(LENGTHS), 8))
    m = trainer.callback_metrics
    for name in ("train/loss", "train/ce", "train/kd", "train/tokens_per_s"):
        assert name in m
    assert float(m["train/loss"]) == pytest.approx(0.5 * float(m["train/ce"]) + float(m["train/kd"]), rel=1e-5)
    assert float(m["train/tokens_per_s"]) > 0


def test_labels_only_needs_no_teacher_and_kd_without_teacher_is_an_error():
    module = CausalLMDistillationModule(TinyLM(seed=2))
    assert module.loss.kd_weight == 0 and module.teacher is None
    with pytest.raises(ValueError, match="no teacher was given"):
        CausalLMDistillationModule(TinyLM(seed=2), None, TokenKD())
    with pytest.raises(ValueError, match="vocab_alignment='loose' is not known"):
        CausalLMDistillationModule(TinyLM(seed=2), vocab_alignment="loose")


# --------------------------------------------------------------------------- export and init
def test_save_pretrained_round_trip_and_pipeline(tmp_path):
    transformers = pytest.importorskip("transformers")
    from kd_lightning.data.text import train_bpe_tokenizer
    from kd_lightning.models.lm import build_causal_lm

    text = ["def add(a, b):\n    return a + b\n" * 20, "the quick brown fox jumps over the lazy dog\n" * 20]
    tok = train_bpe_tokenizer(text, vocab_size=300)
    student = build_causal_lm("llama", vocab_size=len(tok), hidden_size=16, num_layers=1, num_heads=2,
                              intermediate_size=32, max_position_embeddings=32)
    module = CausalLMDistillationModule(student, tokenizer=tok)
    path = module.save_student_pretrained(tmp_path / "student")
    loaded = transformers.AutoModelForCausalLM.from_pretrained(path)
    ids = torch.tensor([tok("def add(a, b):")["input_ids"]])
    with torch.no_grad():
        assert torch.allclose(loaded(ids).logits, student.eval()(ids).logits, atol=1e-6)
    gen = transformers.pipeline("text-generation", model=path)
    out = gen("def add", max_new_tokens=4, do_sample=False)
    assert out[0]["generated_text"].startswith("def add")
    with pytest.raises(TypeError, match="not a Hugging Face model"):
        CausalLMDistillationModule(TinyLM()).save_student_pretrained(tmp_path / "x", tok)


def test_init_student_from_teacher_copies_every_other_layer():
    pytest.importorskip("transformers")
    from kd_lightning.lm import init_student_from_teacher
    from kd_lightning.models.lm import build_causal_lm

    kw = dict(vocab_size=20, hidden_size=16, num_heads=2, intermediate_size=24, max_position_embeddings=16)
    teacher, student = build_causal_lm("llama", num_layers=4, **kw), build_causal_lm("llama", num_layers=2, **kw)
    assert init_student_from_teacher(student, teacher) == [0, 2]
    for i, j in ((0, 0), (1, 2)):
        for (k, a), b in zip(student.model.layers[i].state_dict().items(), teacher.model.layers[j].state_dict().values()):
            assert torch.equal(a, b), k
    assert torch.equal(student.model.embed_tokens.weight, teacher.model.embed_tokens.weight)
    assert torch.equal(student.model.norm.weight, teacher.model.norm.weight)
    narrow = build_causal_lm("llama", num_layers=2, **{**kw, "hidden_size": 8})
    with pytest.raises(ValueError, match=r"embeddings differ, student \(20, 8\) vs teacher \(20, 16\)"):
        init_student_from_teacher(narrow, teacher)
    deep = build_causal_lm("llama", num_layers=3, **kw)
    with pytest.raises(ValueError, match=r"teacher layer\(s\) \[4\]"):
        init_student_from_teacher(deep, teacher)


# ----------------------------------------------------------------------------- one house: ensembles, taps
def test_an_ensemble_of_teachers_distills_their_weighted_average_distribution():
    """A teacher list is one teacher whose next-token distribution at T is Σ_k w_k softmax(z_k / T): the KD
    term equals the divergence to that hand-averaged distribution, and training runs on it."""
    t1, t2, student = TinyLM(seed=1), TinyLM(seed=3), TinyLM(seed=2)
    loss = TokenKD(temperature=2.0)
    module = CausalLMDistillationModule(student, [t1, t2], loss=loss, ensemble_weights=[3.0, 1.0])
    batch = ragged_batch(LENGTHS)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    with torch.no_grad():
        p = 0.75 * torch.softmax(t1(ids) / 2.0, -1) + 0.25 * torch.softmax(t2(ids) / 2.0, -1)
        teacher_logits = module.teacher.token_logits(ids, mask)
    torch.testing.assert_close(torch.softmax(teacher_logits / 2.0, -1), p)
    kd_mask = torch.cat([mask[:, 1:].bool(), torch.zeros_like(mask[:, :1], dtype=torch.bool)], 1)
    # forward KL(p || q) at T, times T², over the KD positions: by hand from the averaged p
    q_log = torch.log_softmax(student(ids) / 2.0, -1)
    expected = 4.0 * ((p * (p.log() - q_log)).sum(-1) * kd_mask).sum() / kd_mask.sum()
    out = module.loss_inputs(batch, "val")
    torch.testing.assert_close(loss(out)["kd"], expected, rtol=1e-5, atol=1e-6)
    before = [q.detach().clone() for q in student.parameters()]
    trainer = L.Trainer(**{**dict(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                                  enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                                  limit_val_batches=0), "max_steps": 2})
    trainer.fit(module, train_dataloaders=DataLoader(rows(batch), batch_size=4))
    assert any(not torch.equal(a, b) for a, b in zip(before, student.parameters()))
    assert not any(q.requires_grad for q in module.teacher.parameters())


def test_token_kd_composed_with_hidden_states_through_taps():
    """Compose([TokenKD, HiddenStates]) on causal LMs: the hidden states are tapped from both models, the
    projection (student width 4 -> teacher width 8) is built from the first batch and trained, and the terms
    are the hand-computed ones."""
    from kd_lightning.losses import Compose, HiddenStates
    from kd_lightning.losses.functional import hidden_state_loss

    teacher, student = TinyLM(hidden=8, seed=1), TinyLM(hidden=4, seed=2)
    hidden = HiddenStates(student_layers="mix", teacher_layers="mix", weight=0.5)
    token = TokenKD(ce_weight=0.2, kd_weight=0.8)
    module = CausalLMDistillationModule(student, teacher, loss=Compose([token, hidden]))
    batch = ragged_batch(LENGTHS)
    trainer = _trainer(max_steps=3)
    trainer.fit(module, train_dataloaders=DataLoader(rows(batch), batch_size=4))
    assert not hidden.needs_build and isinstance(hidden.adapters[0], torch.nn.Linear)
    held = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert {id(p) for p in hidden.adapters.parameters()} <= held
    assert {"train/loss", "train/ce", "train/kd", "train/hidden"} <= set(trainer.callback_metrics)
    inputs = module.loss_inputs(batch, "val")
    terms = module.loss(inputs)
    ids = batch["input_ids"]
    with torch.no_grad():
        h_s = student.mix(torch.cumsum(student.emb(ids), 1) / torch.arange(1, ids.shape[1] + 1)[None, :, None])
        h_t = teacher.mix(torch.cumsum(teacher.emb(ids), 1) / torch.arange(1, ids.shape[1] + 1)[None, :, None])
        want = hidden_state_loss(hidden.adapters[0](h_s), h_t)
    torch.testing.assert_close(terms["hidden"], want)
    torch.testing.assert_close(terms["loss"], 0.2 * terms["ce"] + 0.8 * terms["kd"] + 0.5 * want)
