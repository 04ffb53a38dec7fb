"""kd_lightning/signal.py: one teacher-signal interface for both families — a live network, a weighted
ensemble, stored dense outputs and stored top-k outputs give the right distribution on hand-made tensors,
and a module of each family trains one step from each kind."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from helpers import MLP, DictDataset, sgd
from kd_lightning import CausalLMDistillationModule, DistillationModule
from kd_lightning.losses import KD, TokenKD
from kd_lightning.losses.functional import token_divergence
from kd_lightning.losses.base import CLASSIFIER, TOKEN
from kd_lightning.mutual import MutualLearningModule
from kd_lightning.signal import (LiveTeacher, NoTeacher, StoredOutputs, TeacherOutput, carries_outputs, stored_output,
                                 teacher_signal)
from kd_lightning.taps import FeatureTaps
from kd_lightning.teacher import FrozenTeacher, TeacherEnsemble
from lm.helpers import TinyLM

pytestmark = pytest.mark.usefixtures("seeded")

B, C, K, T = 4, 6, 2, 2.0
VOCAB, LEN = 13, 5


def hand_topk():
    """Top-2 rows over 6 classes with their probabilities and rest mass written out by hand."""
    ids = torch.tensor([[0, 3], [5, 1], [2, 4], [1, 0]])
    p = torch.tensor([[0.5, 0.3], [0.6, 0.1], [0.4, 0.4], [0.9, 0.05]])
    rest = 1.0 - p.sum(-1)
    full = torch.empty(B, C)
    for row in range(B):
        full[row] = rest[row] / (C - K)
        full[row, ids[row]] = p[row]
    return ids, p.log(), rest, full


def topk_batch(ids, logprobs, rest, temperature=T, **extra):
    return {"teacher_topk_ids": ids, "teacher_topk_logprobs": logprobs, "teacher_rest": rest,
            "teacher_temperature": torch.full((ids.shape[0],), temperature), **extra}


def lm_members():
    return [TinyLM(VOCAB, seed=1), TinyLM(VOCAB, seed=2)]


# ================================================================= each kind, each family (hand tensors)
def test_no_teacher_gives_nothing_whatever_the_batch_carries():
    out = NoTeacher()({"teacher_logits": torch.zeros(B, C)}, torch.zeros(B, 3))
    assert not out.present and out.dense(C) is None and out.features == {}


def test_live_classifier_network_gives_its_logits_without_a_graph():
    net = nn.Linear(3, C)
    x = torch.randn(B, 3)
    signal = LiveTeacher(FrozenTeacher(net), CLASSIFIER)
    out = signal((x, None), x)
    torch.testing.assert_close(out.logits, net(x).detach())
    assert not out.logits.requires_grad and out.topk is None


def test_live_classifier_ensemble_gives_the_weighted_mean_of_softened_probabilities():
    members = [nn.Linear(3, C), nn.Linear(3, C)]
    x = torch.randn(B, 3)
    signal = LiveTeacher(FrozenTeacher(TeacherEnsemble(members, [1.0, 3.0], temperature=T)), CLASSIFIER)
    z = signal(None, x).dense(C)
    expected = 0.25 * F.softmax(members[0](x) / T, -1) + 0.75 * F.softmax(members[1](x) / T, -1)
    torch.testing.assert_close(F.softmax(z / T, -1), expected.detach())


def test_live_token_network_gives_next_token_logits():
    lm = TinyLM(VOCAB, seed=3)
    ids = torch.randint(0, VOCAB, (B, LEN))
    out = LiveTeacher(FrozenTeacher(lm), TOKEN)({"input_ids": ids}, ids, torch.ones_like(ids))
    assert out.logits.shape == (B, LEN, VOCAB)
    torch.testing.assert_close(out.logits, lm(ids).detach())


def test_live_token_ensemble_gives_the_weighted_mean_of_next_token_probabilities():
    members = lm_members()
    ids = torch.randint(0, VOCAB, (B, LEN))
    signal = LiveTeacher(FrozenTeacher(TeacherEnsemble(members, [2.0, 1.0], temperature=T)), TOKEN)
    z = signal({"input_ids": ids}, ids, torch.ones_like(ids)).logits
    expected = (2 * F.softmax(members[0](ids) / T, -1) + F.softmax(members[1](ids) / T, -1)) / 3
    torch.testing.assert_close(F.softmax(z / T, -1), expected.detach())


@pytest.mark.parametrize("shape", [(B, C), (B, LEN, VOCAB)], ids=["classifier", "token"])
def test_stored_dense_outputs_are_the_batch_rows(shape):
    stored = torch.randn(shape)
    out = StoredOutputs()({"teacher_logits": stored}, None)
    assert out.logits is stored and out.topk is None and out.dense(shape[-1]) is stored


def test_stored_topk_for_a_classifier_gives_the_stored_probabilities_and_spreads_the_rest():
    ids, logprobs, rest, full = hand_topk()
    out = StoredOutputs()(topk_batch(ids, logprobs, rest), torch.zeros(B, 3))
    # Softened at the stored (= the loss's) temperature, the rebuilt logits are exactly the stored distribution.
    torch.testing.assert_close(F.softmax(out.dense(C) / T, -1), full)


def test_stored_topk_for_a_causal_lm_is_the_triple_as_stored():
    top = F.log_softmax(torch.randn(B, LEN, VOCAB) * 2, -1).topk(K, -1)
    ids, logprobs = top.indices, top.values
    rest = 1 - logprobs.exp().sum(-1)
    out = StoredOutputs()(topk_batch(ids, logprobs, rest, input_ids=torch.zeros(B, LEN)), None)
    assert out.logits is None
    assert out.topk[0] is ids and out.topk[1] is logprobs and out.topk[2] is rest
    # Dense per position, the same rule as for classifiers: row (b, t) holds exp(logprobs) on its ids.
    probs = F.softmax(out.dense(VOCAB) / T, -1)
    torch.testing.assert_close(probs.gather(-1, ids), logprobs.exp())


# ====================================================================================== the rules
def test_a_live_teacher_reads_stored_outputs_unless_the_loss_taps_it():
    net = nn.Sequential(nn.Linear(3, C))
    x, stored = torch.randn(B, 3), torch.randn(B, C)
    signal = LiveTeacher(FrozenTeacher(net), CLASSIFIER)
    assert signal({"teacher_logits": stored}, x).logits is stored
    taps = FeatureTaps(signal.network.net, ["0"], "teacher")
    out = signal({"teacher_logits": stored}, x, taps=taps)
    torch.testing.assert_close(out.logits, net(x).detach())
    torch.testing.assert_close(out.features["0"], net(x).detach())
    taps.remove()


def test_stored_outputs_refuse_a_training_batch_without_them_and_a_partial_top_k():
    signal = StoredOutputs("wrap the data module")
    assert not signal({"input": torch.zeros(2)}, None).present  # evaluation batches may carry none
    with pytest.raises(ValueError, match=r"batch has no teacher_topk_ids.*it holds \['input'\].*wrap the data"):
        signal({"input": torch.zeros(2)}, None, required=True)
    ids, logprobs, rest, _ = hand_topk()
    with pytest.raises(ValueError, match="without teacher_rest, teacher_temperature"):
        stored_output({"teacher_topk_ids": ids, "teacher_topk_logprobs": logprobs})
    assert carries_outputs({"teacher_rest": rest}) and not carries_outputs((ids, rest))


def test_the_top_k_check_runs_once_on_the_first_top_k_output():
    ids, logprobs, rest, _ = hand_topk()
    signal = StoredOutputs()
    signal.check(TeacherOutput(logits=torch.zeros(B, C)), C, T)  # nothing to check: not marked done
    assert not signal.checked
    with pytest.raises(ValueError, match="taken at T=4.0 but the loss uses T=2.0"):
        signal.check(signal(topk_batch(ids, logprobs, rest, temperature=4.0), None), C, T)
    with pytest.raises(ValueError, match="hold id 5, outside the student's vocabulary of 5"):
        signal.check(signal(topk_batch(ids, logprobs, rest), None), 5, T)
    signal.check(signal(topk_batch(ids, logprobs, rest), None), C, T)
    assert signal.checked
    signal.check(signal(topk_batch(ids, logprobs, rest, temperature=4.0), None), C, T)  # no sync after the first


def test_the_signal_is_built_from_the_constructors_and_held_by_the_base():
    net = MLP(hidden=8)
    module = DistillationModule(MLP(hidden=8), net)
    assert isinstance(module.teacher_signal, LiveTeacher) and module.teacher_signal.network is module.teacher
    assert isinstance(DistillationModule(MLP(hidden=8)).teacher_signal, StoredOutputs)
    lm = CausalLMDistillationModule(TinyLM(VOCAB), lm_members())
    assert isinstance(lm.teacher_signal, LiveTeacher) and isinstance(lm.teacher.net, TeacherEnsemble)
    assert isinstance(CausalLMDistillationModule(TinyLM(VOCAB), None, TokenKD(), teacher_outputs=True).teacher_signal,
                      StoredOutputs)
    assert isinstance(CausalLMDistillationModule(TinyLM(VOCAB)).teacher_signal, NoTeacher)
    assert isinstance(MutualLearningModule([MLP(hidden=8), MLP(hidden=8)]).teacher_signal, NoTeacher)
    # The signal is no module: the teacher's checkpoint keys stay teacher.*, and it adds no parameters.
    assert all(not k.startswith("teacher_signal") for k in module.state_dict())
    assert isinstance(teacher_signal(None, TOKEN, stored=False), NoTeacher)
    with pytest.raises(TypeError, match="takes a FrozenTeacher, got MLP"):
        teacher_signal(net, CLASSIFIER, stored=False)  # type: ignore[arg-type]


# ============================================================= one training step per kind and family
def plain_net(seed: int) -> nn.Module:
    """No dropout or BatchNorm: the same outputs in training and evaluation, so KD can be computed by hand."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(16, 8), nn.Tanh(), nn.Linear(8, C))


def classifier_data(kind: str):
    torch.manual_seed(0)
    x, y = torch.randn(B, 16), torch.randint(0, C, (B,))
    items = {"input": x, "target": y}
    if kind == "stored_dense":
        items["teacher_logits"] = torch.randn(B, C) * 2
    if kind == "stored_topk":
        ids, logprobs, rest, _ = hand_topk()
        items.update(topk_batch(ids, logprobs, rest))
    return x, items


@pytest.mark.parametrize("kind", ["live", "ensemble", "stored_dense", "stored_topk"])
def test_a_classifier_trains_one_step_from_each_signal_kind(make_trainer, kind):
    x, items = classifier_data(kind)
    members = [plain_net(1), plain_net(2)]
    teacher = {"live": members[0], "ensemble": members}.get(kind)
    student = plain_net(3)
    with torch.no_grad():
        q = F.log_softmax(student(x) / T, -1)
        if kind == "live":
            p = F.softmax(members[0](x) / T, -1)
        elif kind == "ensemble":
            p = (F.softmax(members[0](x) / T, -1) + F.softmax(members[1](x) / T, -1)) / 2
        elif kind == "stored_dense":
            p = F.softmax(items["teacher_logits"] / T, -1)
        else:
            p = hand_topk()[3]
        expected_kd = T * T * (p * (p.log() - q)).sum(-1).mean()
    before = [w.detach().clone() for w in student.parameters()]
    module = DistillationModule(student, teacher, loss=KD(temperature=T, ce_weight=0.0, kd_weight=1.0),
                                optimizer=sgd(0.1))
    trainer = make_trainer(max_steps=1)
    trainer.fit(module, DataLoader(DictDataset(items), batch_size=B))
    assert float(trainer.callback_metrics["train/kd"]) == pytest.approx(float(expected_kd), rel=1e-5)
    assert any(not torch.equal(a, b) for a, b in zip(before, student.parameters()))


def lm_batch(kind: str, members):
    torch.manual_seed(0)
    ids = torch.randint(0, VOCAB, (B, LEN))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}
    if kind == "stored_dense":
        batch["teacher_logits"] = torch.randn(B, LEN, VOCAB)
    if kind == "stored_topk":
        with torch.no_grad():
            logp = F.log_softmax(members[0](ids) / T, -1)
        top = logp.topk(K, -1)
        batch.update(topk_batch(top.indices, top.values, 1 - top.values.exp().sum(-1)))
    return batch


@pytest.mark.parametrize("kind", ["live", "ensemble", "stored_dense", "stored_topk"])
def test_a_causal_lm_trains_one_step_from_each_signal_kind(make_trainer, kind):
    members = lm_members()
    batch = lm_batch(kind, members)
    teacher = {"live": members[0], "ensemble": members}.get(kind)
    student = TinyLM(VOCAB, seed=5)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    with torch.no_grad():
        s = student(ids)
        if kind == "live":
            t = members[0](ids)
        elif kind == "ensemble":
            t = T * ((F.softmax(members[0](ids) / T, -1) + F.softmax(members[1](ids) / T, -1)) / 2).log()
        elif kind == "stored_dense":
            t = batch["teacher_logits"]
        if kind == "stored_topk":  # renormalised over the kept ids, at every counted position
            q = F.log_softmax(s / T, -1).gather(-1, batch["teacher_topk_ids"])
            p = F.softmax(batch["teacher_topk_logprobs"], -1)
            per = (p * (p.log() - q)).sum(-1)[:, :-1]
            expected_kd = T * T * per.mean()
        else:
            # Position i predicts token i + 1: every position but the last counts.
            counted = torch.cat([mask[:, 1:], torch.zeros_like(mask[:, :1])], 1).bool()
            expected_kd = token_divergence(s, t, counted, temperature=T)
    rows = [{k: v[i] for k, v in batch.items()} for i in range(B)]
    module = CausalLMDistillationModule(student, teacher, loss=TokenKD(temperature=T),
                                        teacher_outputs=kind.startswith("stored"),
                                        optimizer=sgd(0.1))
    before = [w.detach().clone() for w in student.parameters()]
    trainer = make_trainer(max_steps=1)
    trainer.fit(module, DataLoader(rows, batch_size=B))
    assert math.isfinite(float(trainer.callback_metrics["train/kd"]))
    assert float(trainer.callback_metrics["train/kd"]) == pytest.approx(float(expected_kd), rel=1e-4)
    assert any(not torch.equal(a, b) for a, b in zip(before, student.parameters()))


# ------------------------------------------------------------------------------ fused teacher head
class _Base(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(13, 4)

    def forward(self, input_ids, attention_mask=None, use_cache=None):
        return (torch.tanh(self.emb(input_ids)),)


class HeadLM(nn.Module):
    """Hugging Face-style: ``base_model`` gives the final hidden states, ``get_output_embeddings()`` the head."""

    def __init__(self):
        super().__init__()
        self.base = _Base()
        self.lm_head = nn.Linear(4, 13)

    @property
    def base_model(self):
        return self.base

    def get_output_embeddings(self):
        return self.lm_head

    def forward(self, input_ids, attention_mask=None):
        return self.lm_head(self.base(input_ids)[0])


def test_live_teacher_gives_hidden_states_and_head_when_asked_and_it_can():
    torch.manual_seed(0)
    ids = torch.randint(0, 13, (2, 5))
    mask = torch.ones_like(ids)
    signal = LiveTeacher(FrozenTeacher(HeadLM()), TOKEN)
    assert signal.fuses_head
    fused = signal({"input_ids": ids}, ids, mask, fused_head=True)
    plain = signal({"input_ids": ids}, ids, mask)
    assert fused.logits is None and fused.present and fused.hidden.shape == (2, 5, 4)
    assert fused.head[0] is signal.network.net.lm_head.weight and not fused.hidden.requires_grad
    torch.testing.assert_close(F.linear(fused.hidden, *fused.head), plain.logits)
    # an ensemble, a plain module and stored outputs answer with logits, asked or not
    ensemble = LiveTeacher(FrozenTeacher(TeacherEnsemble([HeadLM(), HeadLM()])), TOKEN)
    for other in (ensemble, LiveTeacher(FrozenTeacher(TinyLM()), TOKEN)):
        assert not other.fuses_head
        out = other({"input_ids": ids}, ids, mask, fused_head=True)
        assert out.hidden is None and out.logits.shape == (2, 5, 13)
    stored = {"input_ids": ids, "teacher_logits": plain.logits}
    assert signal(stored, ids, mask, fused_head=True).logits is plain.logits
