"""TokenKD and CausalLMDistillationModule with the fused student head (and the teacher's fused too) equal the
unfused path."""
import pytest
import torch

from kd_lightning import CausalLMDistillationModule
from kd_lightning.losses import TokenKD

from .helpers import TinyLM, ragged_batch

LENGTHS = [12, 9, 5, 12]


def _grads(module, batch):
    module.student.zero_grad()
    loss = module.training_step(batch, 0)
    loss.backward()
    return float(loss), {k: p.grad.clone() for k, p in module.student.named_parameters() if p.grad is not None}


def _hf(arch, hidden, vocab=13, seed=0):
    pytest.importorskip("transformers")
    from kd_lightning.models.lm import build_causal_lm

    torch.manual_seed(seed)
    return build_causal_lm(arch, vocab_size=vocab, hidden_size=hidden, num_layers=1, num_heads=2, intermediate_size=16,
                           max_position_embeddings=12).double().eval()  # eval: no dropout


def _head_calls(net):
    """A list that grows by one each time ``net``'s output layer runs."""
    calls = []
    net.get_output_embeddings().register_forward_hook(lambda *_: calls.append(1))
    return calls


@pytest.mark.parametrize("loss_kw", [dict(divergence="jsd", beta=0.3, ce_weight=0.5, kd_weight=1.0),
                                     dict(divergence="forward", kd_positions="labels", temperature=2.0)])
def test_module_fused_head_equals_unfused(loss_kw):
    teacher, student = _hf("llama", 16), _hf("gpt2", 8, seed=1)
    calls = _head_calls(teacher)
    batch = ragged_batch(LENGTHS)
    results = []
    for fused in (False, True):
        module = CausalLMDistillationModule(student, teacher, TokenKD(chunk_size=5, **loss_kw), fused_head=fused)
        assert module.teacher_signal.fuses_head
        del calls[:]
        results.append(_grads(module, batch))
        # fused: the teacher ran its base model only, its logits were made chunk by chunk inside the loss
        assert len(calls) == (0 if fused else 1)
    (l0, g0), (l1, g1) = results
    assert l1 == pytest.approx(l0, rel=1e-10)
    assert g0.keys() == g1.keys() and g0
    for k in g0:
        torch.testing.assert_close(g1[k], g0[k], rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("teacher_kind", ["truncate", "ensemble", "plain"])
def test_module_fused_head_other_teachers_equal_unfused(teacher_kind):
    """truncate: the teacher's weight rows are cut (its head still fused); an ensemble and a teacher that is
    not Hugging Face-style give their logits as before."""
    student = _hf("gpt2", 8, seed=1)
    kw = {}
    if teacher_kind == "truncate":
        teacher = _hf("llama", 16, vocab=16)  # 3 padding rows more than the student
        kw = dict(vocab_alignment="truncate")
    elif teacher_kind == "ensemble":
        teacher = [_hf("llama", 16), _hf("llama", 8, seed=2)]
        kw = dict(ensemble_weights=[0.7, 0.3])
    else:
        teacher = TinyLM(seed=3).double()
    batch = ragged_batch(LENGTHS)
    results = []
    for fused in (False, True):
        module = CausalLMDistillationModule(student, teacher, TokenKD(divergence="reverse", chunk_size=4),
                                            fused_head=fused, **kw)
        assert module.teacher_signal.fuses_head == (teacher_kind == "truncate")
        results.append(_grads(module, batch))
    (l0, g0), (l1, g1) = results
    assert l1 == pytest.approx(l0, rel=1e-10)
    for k in g0:
        torch.testing.assert_close(g1[k], g0[k], rtol=1e-8, atol=1e-12)


def test_token_kd_fused_inputs_equal_logits_and_chunking_changes_nothing():
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(3, 6, 5, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(11, 5, generator=g, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(3, 6, 11, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 11, (3, 6), generator=g)
    labels[0, :3] = -100
    mask = torch.ones(3, 6, dtype=torch.long)
    mask[2, 4:] = 0
    out = []
    for chunk, fused in ((None, False), (1, False), (4, True)):
        loss = TokenKD(divergence="skew_reverse", ce_weight=0.3, kd_weight=0.7, chunk_size=chunk)
        if fused:
            terms = loss(None, teacher, labels, mask, student_hidden=hidden, lm_head_weight=weight)
        else:
            terms = loss(hidden @ weight.T, teacher, labels, mask)
        grads = torch.autograd.grad(terms["loss"], [hidden, weight])
        out.append((terms, grads))
    for terms, grads in out[1:]:
        for k in ("loss", "ce", "kd"):
            torch.testing.assert_close(terms[k], out[0][0][k], rtol=1e-12, atol=0)
        for a, b in zip(grads, out[0][1]):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-14)


def test_token_kd_teacher_head_inputs_equal_teacher_logits():
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(2, 5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(9, 4, generator=g, dtype=torch.float64, requires_grad=True)
    t_hidden = torch.randn(2, 5, 6, generator=g, dtype=torch.float64)
    t_weight, t_bias = torch.randn(9, 6, generator=g, dtype=torch.float64), torch.randn(9, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 9, (2, 5), generator=g)
    loss = TokenKD(divergence="tvd", temperature=1.7, ce_weight=0.2, chunk_size=3)
    want = loss(None, torch.nn.functional.linear(t_hidden, t_weight, t_bias), labels, student_hidden=hidden,
                lm_head_weight=weight)
    got = loss(None, None, labels, student_hidden=hidden, lm_head_weight=weight, teacher_hidden=t_hidden,
               teacher_lm_head_weight=t_weight, teacher_lm_head_bias=t_bias)
    for k in ("loss", "ce", "kd"):
        torch.testing.assert_close(got[k], want[k], rtol=1e-12, atol=0)
    for a, b in zip(torch.autograd.grad(got["loss"], [hidden, weight]), torch.autograd.grad(want["loss"], [hidden, weight])):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-14)
    with pytest.raises(ValueError, match="needs the fused student head"):
        loss(hidden.detach() @ weight.detach().T, None, labels, teacher_hidden=t_hidden, teacher_lm_head_weight=t_weight)


def test_fused_head_refuses_a_model_without_a_linear_head():
    with pytest.raises(TypeError, match="fused_head=True needs"):
        CausalLMDistillationModule(TinyLM(), TinyLM(seed=1), fused_head=True)
