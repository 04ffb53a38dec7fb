"""token_divergence / token_divergence_topk against hand computations and the REFERENCE.md formulas."""
import math

import numpy as np
import pytest
import torch

from kd_lightning.losses.functional import TOKEN_DIVERGENCES, token_divergence, token_divergence_topk


def _np_softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _np_kl(a, b):
    return float(np.sum(a * (np.log(a) - np.log(b))))


def _np_divergence(p, q, divergence, beta=0.5, alpha=0.1):
    if divergence == "forward":
        return _np_kl(p, q)
    if divergence == "reverse":
        return _np_kl(q, p)
    if divergence == "jsd":
        m = beta * p + (1 - beta) * q
        return beta * _np_kl(p, m) + (1 - beta) * _np_kl(q, m)
    if divergence == "skew_forward":
        return _np_kl(p, alpha * p + (1 - alpha) * q)
    if divergence == "skew_reverse":
        return _np_kl(q, (1 - alpha) * p + alpha * q)
    return 0.5 * float(np.abs(p - q).sum())


@pytest.mark.parametrize("divergence", TOKEN_DIVERGENCES)
def test_zero_when_student_equals_teacher(divergence):
    z = torch.randn(2, 5, 11) * 3
    assert token_divergence(z, z.clone(), divergence=divergence, temperature=2.0).item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("divergence", TOKEN_DIVERGENCES)
def test_never_negative_on_random_logits(divergence):
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        s, t = torch.randn(3, 7, 13, generator=g) * 4, torch.randn(3, 7, 13, generator=g) * 4
        # per-position values, not just the mean: every single one is >= 0
        for i in range(3):
            for j in range(7):
                v = token_divergence(s[i, j], t[i, j], divergence=divergence, beta=0.3, alpha=0.2)
                assert v.item() >= -1e-7


@pytest.mark.parametrize("divergence", TOKEN_DIVERGENCES)
@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_hand_computation_tiny_vocab(divergence, temperature):
    # Two sequences of three positions over a vocabulary of 4; position (1, 2) is masked out.
    s = np.array([[[1.0, 0.0, -1.0, 2.0], [0.5, 0.5, 0.0, -2.0], [3.0, 1.0, 0.0, 0.0]],
                  [[0.0, 0.0, 0.0, 0.0], [2.0, -1.0, 1.0, 0.5], [9.0, 9.0, 9.0, 9.0]]])
    t = np.array([[[0.0, 1.0, 2.0, -1.0], [1.5, 0.0, -0.5, 1.0], [0.0, 0.0, 3.0, 1.0]],
                  [[1.0, 2.0, 3.0, 4.0], [-1.0, 0.0, 1.0, 2.0], [0.0, 0.0, 0.0, 0.0]]])
    mask = np.array([[True, True, True], [True, True, False]])
    total = 0.0
    for i, j in zip(*np.nonzero(mask)):
        total += _np_divergence(_np_softmax(t[i, j] / temperature), _np_softmax(s[i, j] / temperature),
                                divergence, beta=0.3, alpha=0.25)
    expected = temperature ** 2 * total / mask.sum()
    got = token_divergence(torch.tensor(s), torch.tensor(t), torch.tensor(mask), divergence=divergence,
                           temperature=temperature, beta=0.3, alpha=0.25)
    assert got.item() == pytest.approx(expected, rel=1e-10)
    # num_valid replaces the divisor: the same sum over 10 tokens of a larger step
    got10 = token_divergence(torch.tensor(s), torch.tensor(t), torch.tensor(mask), divergence=divergence,
                             temperature=temperature, beta=0.3, alpha=0.25, num_valid=10)
    assert got10.item() == pytest.approx(temperature ** 2 * total / 10, rel=1e-10)


def test_jsd_endpoints_are_forward_and_reverse_kl():
    s, t = torch.randn(4, 9, 17), torch.randn(4, 9, 17)
    fwd = token_divergence(s, t, divergence="forward")
    rev = token_divergence(s, t, divergence="reverse")
    assert torch.equal(token_divergence(s, t, divergence="jsd", beta=0.0), fwd)
    assert torch.equal(token_divergence(s, t, divergence="jsd", beta=1.0), rev)
    assert not torch.allclose(fwd, rev)


def test_skew_alpha_zero_is_plain_kl():
    s, t = torch.randn(4, 9, 17), torch.randn(4, 9, 17)
    assert torch.equal(token_divergence(s, t, divergence="skew_forward", alpha=0.0), token_divergence(s, t))
    assert torch.equal(token_divergence(s, t, divergence="skew_reverse", alpha=0.0),
                       token_divergence(s, t, divergence="reverse"))
    # alpha = 1 mixes in only the first argument's own distribution: KL(p‖p) = 0
    assert token_divergence(s, t, divergence="skew_forward", alpha=1.0).item() == pytest.approx(0.0, abs=1e-6)


def test_jsd_half_is_symmetric_and_bounded_by_log2():
    s, t = torch.randn(6, 13) * 5, torch.randn(6, 13) * 5
    a = token_divergence(s, t, divergence="jsd", beta=0.5)
    b = token_divergence(t, s, divergence="jsd", beta=0.5)
    assert a.item() == pytest.approx(b.item(), rel=1e-5)
    # a one-hot teacher against a disjoint one-hot student reaches the bound log 2
    big = torch.full((1, 3), -1e4)
    p, q = big.clone(), big.clone()
    p[0, 0] = q[0, 1] = 0.0
    assert token_divergence(q, p, divergence="jsd", beta=0.5).item() == pytest.approx(math.log(2), rel=1e-6)


@pytest.mark.parametrize("divergence", TOKEN_DIVERGENCES)
def test_gradcheck_float64(divergence):
    g = torch.Generator().manual_seed(1)
    s = torch.randn(2, 3, 5, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randn(2, 3, 5, generator=g, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[True, False, True], [True, True, True]])
    fn = lambda a, b: token_divergence(a, b, mask, divergence=divergence, temperature=1.7, beta=0.3, alpha=0.2)
    assert torch.autograd.gradcheck(fn, (s, t))


def test_gradient_of_forward_kl_is_softmax_difference():
    # d/dz_s [T² KL(p‖q)] = T (q − p) per position, divided by N
    s = torch.randn(5, 7, dtype=torch.float64, requires_grad=True)
    t = torch.randn(5, 7, dtype=torch.float64)
    token_divergence(s, t, temperature=2.0).backward()
    expected = 2.0 * (torch.softmax(s.detach() / 2, -1) - torch.softmax(t / 2, -1)) / 5
    assert torch.allclose(s.grad, expected, atol=1e-12)


@pytest.mark.parametrize("divergence", TOKEN_DIVERGENCES)
def test_minus_inf_logits_give_no_nan(divergence):
    # A masked vocabulary: the last two entries are -inf for both models.
    s = torch.randn(3, 6, requires_grad=True)
    t = torch.randn(3, 6)
    with torch.no_grad():
        s_in = s.clone()
    s_inf = torch.cat([s[:, :4], torch.full((3, 2), float("-inf"))], -1)
    t_inf = torch.cat([t[:, :4], torch.full((3, 2), float("-inf"))], -1)
    out = token_divergence(s_inf, t_inf, divergence=divergence, beta=0.3, alpha=0.2)
    out.backward()
    assert torch.isfinite(out) and torch.isfinite(s.grad).all()
    # and it equals the divergence over the 4 live entries
    ref = token_divergence(s_in[:, :4], t[:, :4], divergence=divergence, beta=0.3, alpha=0.2)
    assert out.item() == pytest.approx(ref.item(), rel=1e-5, abs=1e-7)
    assert torch.all(s.grad[:, 4:] == 0)


@pytest.mark.parametrize("divergence", TOKEN_DIVERGENCES)
def test_empty_mask_gives_zero_with_zero_grad(divergence):
    s = torch.randn(2, 4, 9, requires_grad=True)
    t = torch.randn(2, 4, 9)
    out = token_divergence(s, t, torch.zeros(2, 4, dtype=torch.bool), divergence=divergence)
    out.backward()
    assert out.item() == 0.0 and not torch.isnan(out)
    assert torch.equal(s.grad, torch.zeros_like(s))


def test_bf16_inputs_computed_in_fp32():
    s, t = torch.randn(2, 8, 33) * 3, torch.randn(2, 8, 33) * 3
    sb, tb = s.bfloat16(), t.bfloat16()
    out = token_divergence(sb, tb, divergence="jsd")
    assert out.dtype == torch.float32
    assert out.item() == pytest.approx(token_divergence(sb.float(), tb.float(), divergence="jsd").item(), rel=1e-6)


@pytest.mark.parametrize("tail", [False, True])
def test_topk_at_full_vocab_equals_dense_forward_kl(tail):
    s, t = torch.randn(2, 5, 12, dtype=torch.float64), torch.randn(2, 5, 12, dtype=torch.float64)
    mask = torch.tensor([[True, True, False, True, True], [False, True, True, True, True]])
    logp = torch.log_softmax(t / 2.0, -1)
    vals, ids = logp.topk(12, dim=-1)
    got = token_divergence_topk(s, ids, vals, mask, tail=tail, temperature=2.0)
    dense = token_divergence(s, t, mask, temperature=2.0)
    assert got.item() == pytest.approx(dense.item(), rel=1e-10)


def test_topk_hand_computation_renormalised_and_tail():
    # one position, vocabulary of 4, k = 2
    z_s = np.array([0.2, 1.0, -0.5, 0.3])
    p = np.array([0.5, 0.3, 0.15, 0.05])
    q = _np_softmax(z_s)
    ids = np.array([0, 1])
    pr = p[ids] / p[ids].sum()
    renorm = float(np.sum(pr * (np.log(pr) - np.log(q[ids]))))
    r_t, r_s = 1 - p[ids].sum(), 1 - q[ids].sum()
    tail = float(np.sum(p[ids] * (np.log(p[ids]) - np.log(q[ids])))) + r_t * (np.log(r_t) - np.log(r_s))
    args = (torch.tensor(z_s)[None], torch.tensor(ids)[None], torch.tensor(np.log(p[ids]))[None])
    assert token_divergence_topk(*args).item() == pytest.approx(renorm, rel=1e-12)
    assert token_divergence_topk(*args, tail=True).item() == pytest.approx(tail, rel=1e-12)
    # A stored rest mass (the cache keeps it in fp32, its log-probabilities in fp16) is the r_t used.
    stored = 0.21
    with_rest = float(np.sum(p[ids] * (np.log(p[ids]) - np.log(q[ids])))) + stored * (np.log(stored) - np.log(r_s))
    got = token_divergence_topk(*args, tail=True, teacher_rest=torch.tensor([stored], dtype=torch.float64))
    assert got.item() == pytest.approx(with_rest, rel=1e-12)
    # It only matters to the tail bucket; the renormalised form ignores it.
    assert token_divergence_topk(*args, teacher_rest=torch.tensor([stored])).item() == pytest.approx(renorm, rel=1e-12)
    with pytest.raises(ValueError, match="teacher_rest"):
        token_divergence_topk(*args, tail=True, teacher_rest=torch.tensor([0.1, 0.2]))


def test_bad_arguments_one_line_errors():
    s = torch.randn(2, 3)
    with pytest.raises(ValueError, match="divergence must be one of"):
        token_divergence(s, s, divergence="kl")
    with pytest.raises(ValueError, match=r"beta must be a number in \[0, 1\], got 1.5"):
        token_divergence(s, s, divergence="jsd", beta=1.5)
    with pytest.raises(ValueError, match="same shape"):
        token_divergence(s, torch.randn(2, 4))
    with pytest.raises(ValueError, match="mask shape"):
        token_divergence(s, s, torch.ones(3, dtype=torch.bool))
