"""TokenKD and CausalLMDistillationModule with the fused student head equal the unfused path."""
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


@pytest.mark.parametrize("loss_kw", [dict(divergence="jsd", beta=0.3, ce_weight=0.5, kd_weight=1.0),
                                     dict(divergence="forward", kd_positions="labels")])
def test_module_fused_head_equals_unfused(loss_kw):
    pytest.importorskip("transformers")
    from kd_lightning.models.lm import build_causal_lm

    kw = dict(vocab_size=13, num_heads=2, intermediate_size=16, max_position_embeddings=12)
    torch.manual_seed(0)
    teacher = build_causal_lm("llama", hidden_size=16, num_layers=1, **kw).double()
    student = build_causal_lm("gpt2", hidden_size=8, num_layers=1, **kw).double().eval()  # no dropout
    batch = ragged_batch(LENGTHS)
    results = []
    for fused in (False, True):
        module = CausalLMDistillationModule(student, teacher, TokenKD(chunk_size=5, **loss_kw), fused_head=fused)
        results.append(_grads(module, batch))
    (l0, g0), (l1, g1) = results
    assert l1 == pytest.approx(l0, rel=1e-10)
    assert g0.keys() == g1.keys() and g0
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


def test_fused_head_refuses_a_model_without_a_linear_head():
    with pytest.raises(TypeError, match="fused_head=True needs"):
        CausalLMDistillationModule(TinyLM(), TinyLM(seed=1), fused_head=True)
