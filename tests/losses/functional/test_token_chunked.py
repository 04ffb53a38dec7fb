"""The chunked and fused token losses against the straightforward unchunked form."""
import pytest
import torch
import torch.nn.functional as F

from kd_lightning.losses.functional import (TOKEN_DIVERGENCES, default_chunk_size, fused_chunk_size, token_cross_entropy,
                                            token_cross_entropy_fused, token_divergence, token_divergence_fused,
                                            token_divergence_topk)
from kd_lightning.losses.functional.token import _unchunked_token_divergence as reference

PARAMS = dict(beta=0.3, alpha=0.2)


def assert_close_rel(a, b, rel=1e-5):
    """Equal to ``rel`` relative to the larger magnitude of the tensor (entries near 0 included)."""
    scale = max(float(b.abs().max()), 1e-30) if b.numel() else 1.0
    torch.testing.assert_close(a, b, rtol=rel, atol=rel * scale)


def _value_and_grads(fn, *inputs):
    leaves = [x.detach().clone().requires_grad_(x.is_floating_point()) for x in inputs]
    out = fn(*leaves)
    out.backward()
    return out.detach(), [x.grad for x in leaves if x.is_floating_point()]


def _inputs(shape=(3, 5, 23), dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=dtype) * 3, torch.randn(*shape, generator=g, dtype=dtype) * 3


@pytest.mark.parametrize("divergence", TOKEN_DIVERGENCES)
@pytest.mark.parametrize("temperature", [1.0, 2.5])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("num_valid", [None, 37, "tensor"])
def test_values_and_student_gradients_equal_the_unchunked_form(divergence, temperature, masked, num_valid):
    s, t = _inputs()
    mask = (torch.rand(3, 5, generator=torch.Generator().manual_seed(3)) > 0.4) if masked else None
    nv = torch.tensor(41.0, dtype=torch.float64) if num_valid == "tensor" else num_valid
    kw = dict(divergence=divergence, temperature=temperature, num_valid=nv, **PARAMS)
    want, (want_g,) = _value_and_grads(lambda a: reference(a, t, mask, **kw), s)
    for chunk in (1, 3, 7, 15, None):
        got, (got_g,) = _value_and_grads(lambda a: token_divergence(a, t, mask, chunk_size=chunk, **kw), s)
        assert got.dtype == torch.float32
        assert_close_rel(got, want)
        assert_close_rel(got_g, want_g)
        if mask is not None:
            assert torch.all(got_g[~mask] == 0)


@pytest.mark.parametrize("divergence", TOKEN_DIVERGENCES)
def test_chunk_size_changes_nothing(divergence):
    s, t = _inputs((4, 9, 31), seed=1)
    mask = torch.rand(4, 9, generator=torch.Generator().manual_seed(2)) > 0.3
    results = [_value_and_grads(lambda a: token_divergence(a, t, mask, divergence=divergence, chunk_size=c, **PARAMS), s)
               for c in (1, 3, 7, 36, 1000)]
    v0, (g0,) = results[0]
    for v, (g,) in results[1:]:
        # rows are computed independently; only the order of float sums (and vector widths) changes
        torch.testing.assert_close(g, g0, rtol=1e-6, atol=1e-6 * float(g0.abs().max()))
        torch.testing.assert_close(v, v0, rtol=1e-6, atol=0)


@pytest.mark.parametrize("divergence", ["forward", "jsd", "reverse", "skew_forward", "skew_reverse", "tvd"])
@pytest.mark.parametrize("endpoint", [0.0, 1.0])
def test_endpoints_of_the_mixtures(divergence, endpoint):
    s, t = _inputs(seed=4)
    kw = dict(divergence=divergence, beta=endpoint, alpha=endpoint)
    got, (got_g,) = _value_and_grads(lambda a: token_divergence(a, t, chunk_size=4, **kw), s)
    if divergence.startswith("skew") and endpoint == 1.0:  # KL of a distribution against itself: 0
        assert abs(got.item()) < 1e-6 and float(got_g.abs().max()) < 1e-7
        return
    want, (want_g,) = _value_and_grads(lambda a: reference(a, t, **kw), s)
    assert_close_rel(got, want)
    assert_close_rel(got_g, want_g)


@pytest.mark.parametrize("divergence", TOKEN_DIVERGENCES)
def test_teacher_that_requires_grad_gets_the_unchunked_gradient(divergence):
    s, t = _inputs(seed=5)
    mask = torch.tensor([[1, 0, 1, 1, 1], [1, 1, 1, 0, 0], [0, 1, 1, 1, 1]], dtype=torch.bool)
    kw = dict(divergence=divergence, temperature=1.5, **PARAMS)
    want, want_g = _value_and_grads(lambda a, b: reference(a, b, mask, **kw), s, t)
    got, got_g = _value_and_grads(lambda a, b: token_divergence(a, b, mask, chunk_size=2, **kw), s, t)
    assert_close_rel(got, want)
    for a, b in zip(got_g, want_g):
        assert_close_rel(a, b)


@pytest.mark.parametrize("divergence", TOKEN_DIVERGENCES)
def test_bf16_inputs(divergence):
    s, t = _inputs((2, 8, 33), seed=6)
    sb, tb = s.bfloat16(), t.bfloat16()
    kw = dict(divergence=divergence, **PARAMS)
    want, (want_g,) = _value_and_grads(lambda a: reference(a, tb, **kw), sb)
    got, (got_g,) = _value_and_grads(lambda a: token_divergence(a, tb, chunk_size=5, **kw), sb)
    assert got.dtype == torch.float32 and got_g.dtype == torch.bfloat16
    assert_close_rel(got, want)
    # both round one fp32 gradient to bf16 (a last-bit difference where the fp32 values differ slightly)
    torch.testing.assert_close(got_g.float(), want_g.float(), rtol=2 ** -7, atol=1e-3 * float(want_g.abs().max()))


@pytest.mark.parametrize("divergence", TOKEN_DIVERGENCES)
def test_minus_inf_logits(divergence):
    s, t = _inputs((4, 10), seed=7)
    s[:, -2:] = float("-inf")
    t[:, -2:] = float("-inf")
    kw = dict(divergence=divergence, **PARAMS)
    want, (want_g,) = _value_and_grads(lambda a: reference(a, t, **kw), s)
    got, (got_g,) = _value_and_grads(lambda a: token_divergence(a, t, chunk_size=3, **kw), s)
    assert torch.isfinite(got) and torch.isfinite(got_g).all()
    assert torch.all(got_g[:, -2:] == 0)
    assert_close_rel(got, want)
    assert_close_rel(got_g, want_g)


@pytest.mark.parametrize("chunk", [1, 4, None])
def test_empty_mask(chunk):
    s, t = _inputs()
    got, (got_g,) = _value_and_grads(
        lambda a: token_divergence(a, t, torch.zeros(3, 5, dtype=torch.bool), chunk_size=chunk), s)
    assert got.item() == 0.0 and torch.equal(got_g, torch.zeros_like(got_g))


def test_non_contiguous_inputs_are_read_in_place():
    s, t = _inputs((3, 6, 19), seed=8)
    mask = torch.rand(3, 5, generator=torch.Generator().manual_seed(1)) > 0.3
    for m in (mask, None):
        want, (want_g,) = _value_and_grads(lambda a: reference(a[:, :-1], t[:, :-1], m, divergence="jsd"), s)
        got, (got_g,) = _value_and_grads(lambda a: token_divergence(a[:, :-1], t[:, :-1], m, divergence="jsd",
                                                                     chunk_size=4), s)
        assert_close_rel(got, want)
        assert_close_rel(got_g, want_g)


def test_default_chunk_size_bounds_the_chunk():
    assert default_chunk_size(1000) == 1024
    assert default_chunk_size(32_000) == 131
    assert default_chunk_size(128_256) == 32
    assert default_chunk_size(10 ** 9) == 1
    # a fused output layer keeps at least 128 rows a chunk (its passes over W and W's gradient, one per chunk)
    assert fused_chunk_size(32_000) == 131 and fused_chunk_size(128_256) == 128 and fused_chunk_size(1000) == 1024
    with pytest.raises(ValueError, match="chunk_size must be a positive"):
        token_divergence(torch.randn(2, 3), torch.randn(2, 3), chunk_size=0)


def test_scaled_backward_then_a_second_backward_is_refused():
    s, t = _inputs()
    s.requires_grad_()
    out = token_divergence(s, t)
    (2.0 * out).backward(retain_graph=True)
    g = s.grad.clone()
    want, (want_g,) = _value_and_grads(lambda a: 2.0 * reference(a, t), s.detach())
    assert_close_rel(g, want_g)
    with pytest.raises(RuntimeError, match="already"):
        out.backward()


def test_no_grad_computes_the_value_only():
    s, t = _inputs()
    with torch.no_grad():
        got = token_divergence(s.requires_grad_(), t, divergence="reverse")
    assert not got.requires_grad
    assert_close_rel(got, reference(s.detach(), t, divergence="reverse"))


@pytest.mark.parametrize("divergence", TOKEN_DIVERGENCES)
def test_gradcheck_float64_chunked(divergence):
    g = torch.Generator().manual_seed(1)
    s = torch.randn(2, 3, 5, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randn(2, 3, 5, generator=g, dtype=torch.float64)
    mask = torch.tensor([[True, False, True], [True, True, True]])
    fn = lambda a: token_divergence(a, t, mask, divergence=divergence, temperature=1.7, chunk_size=2, **PARAMS)
    assert torch.autograd.gradcheck(fn, (s,))


# ------------------------------------------------------------------------------------------- top-k
@pytest.mark.parametrize("tail", [False, True])
def test_topk_chunk_sizes_agree(tail):
    s, t = _inputs((3, 5, 17), seed=9)
    vals, ids = torch.log_softmax(t, -1).topk(6, dim=-1)
    mask = torch.rand(3, 5, generator=torch.Generator().manual_seed(4)) > 0.3
    want, (want_g, _) = _value_and_grads(lambda a, b: token_divergence_topk(a, ids, b, mask, tail=tail,
                                                                            chunk_size=15), s, vals)
    for chunk in (1, 3, 7, None):
        got, (got_g, _) = _value_and_grads(lambda a, b: token_divergence_topk(a, ids, b, mask, tail=tail,
                                                                              chunk_size=chunk), s, vals)
        assert_close_rel(got, want)
        assert_close_rel(got_g, want_g)


def test_topk_stored_rest_is_chunked_with_its_rows():
    s, t = _inputs((3, 5, 17), seed=9)
    vals, ids = torch.log_softmax(t, -1).topk(6, dim=-1)
    rest = torch.rand(3, 5, generator=torch.Generator().manual_seed(1)) * 0.5
    mask = torch.rand(3, 5, generator=torch.Generator().manual_seed(4)) > 0.3
    want = token_divergence_topk(s, ids, vals, mask, tail=True, teacher_rest=rest, chunk_size=15)
    for chunk in (1, 4, None):
        assert_close_rel(token_divergence_topk(s, ids, vals, mask, tail=True, teacher_rest=rest, chunk_size=chunk), want)
    # Each position reads its own rest mass: changing one counted position's rest changes the value.
    rest2 = rest.clone()
    rest2[mask.nonzero()[0].tolist()] += 0.3
    assert not torch.allclose(token_divergence_topk(s, ids, vals, mask, tail=True, teacher_rest=rest2, chunk_size=1),
                              want)


@pytest.mark.parametrize("tail", [False, True])
def test_topk_gradcheck_float64(tail):
    g = torch.Generator().manual_seed(2)
    s = torch.randn(2, 3, 7, generator=g, dtype=torch.float64, requires_grad=True)
    vals, ids = torch.log_softmax(torch.randn(2, 3, 7, generator=g, dtype=torch.float64), -1).topk(3, dim=-1)
    vals.requires_grad_()
    fn = lambda a, b: token_divergence_topk(a, ids, b, tail=tail, temperature=1.3, chunk_size=4)
    assert torch.autograd.gradcheck(fn, (s, vals))


# ------------------------------------------------------------------------------------------ fused
def _head(n=(2, 7), hidden=6, vocab=29, dtype=torch.float32, seed=10, bias=True):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(*n, hidden, generator=g, dtype=dtype)
    w = torch.randn(vocab, hidden, generator=g, dtype=dtype)
    b = torch.randn(vocab, generator=g, dtype=dtype) if bias else None
    t = torch.randn(*n, vocab, generator=g, dtype=dtype) * 2
    return h, w, b, t


@pytest.mark.parametrize("divergence", TOKEN_DIVERGENCES)
@pytest.mark.parametrize("masked", [False, True])
def test_fused_equals_unfused(divergence, masked):
    h, w, b, t = _head()
    mask = (torch.rand(2, 7, generator=torch.Generator().manual_seed(5)) > 0.4) if masked else None
    kw = dict(divergence=divergence, temperature=1.5, num_valid=20, **PARAMS)
    want, want_g = _value_and_grads(lambda a, c, d: reference(F.linear(a, c, d), t, mask, **kw), h, w, b)
    for chunk in (1, 3, 7, None):
        got, got_g = _value_and_grads(
            lambda a, c, d: token_divergence_fused(a, c, t, mask, lm_head_bias=d, chunk_size=chunk, **kw), h, w, b)
        assert_close_rel(got, want)
        for x, y in zip(got_g, want_g):
            assert_close_rel(x, y)


def test_fused_without_bias_and_with_teacher_gradient():
    h, w, _, t = _head(bias=False)
    want, want_g = _value_and_grads(lambda a, c, d: reference(a @ c.T, d, divergence="jsd"), h, w, t)
    got, got_g = _value_and_grads(lambda a, c, d: token_divergence_fused(a, c, d, divergence="jsd", chunk_size=4),
                                  h, w, t)
    assert_close_rel(got, want)
    for x, y in zip(got_g, want_g):
        assert_close_rel(x, y)


@pytest.mark.parametrize("divergence", TOKEN_DIVERGENCES)
def test_fused_gradcheck_float64(divergence):
    h, w, b, t = _head(n=(2, 3), hidden=4, vocab=5, dtype=torch.float64, seed=11)
    mask = torch.tensor([[True, False, True], [True, True, True]])
    fn = lambda a, c, d: token_divergence_fused(a, c, t, mask, lm_head_bias=d, divergence=divergence,
                                                temperature=1.3, chunk_size=2, **PARAMS)
    assert torch.autograd.gradcheck(fn, (h.requires_grad_(), w.requires_grad_(), b.requires_grad_()))


def test_fused_bf16_close_to_unfused():
    h, w, b, t = (x.bfloat16() for x in _head(n=(4, 16), hidden=32, vocab=97, seed=12))
    want, want_g = _value_and_grads(lambda a, c: reference(F.linear(a, c), t), h, w)
    got, got_g = _value_and_grads(lambda a, c: token_divergence_fused(a, c, t, chunk_size=16), h, w)
    assert got.dtype == torch.float32 and [g.dtype for g in got_g] == [torch.bfloat16] * 2
    torch.testing.assert_close(got, want, rtol=1e-5, atol=0)
    for x, y in zip(got_g, want_g):
        torch.testing.assert_close(x.float(), y.float(), rtol=0.02, atol=0.02 * float(y.abs().max()))


def test_fused_shape_errors():
    h, w, b, t = _head()
    with pytest.raises(ValueError, match="same H"):
        token_divergence_fused(h, w[:, :-1], t)
    with pytest.raises(ValueError, match="vocabulary"):
        token_divergence_fused(h, w[:-1], t)
    with pytest.raises(ValueError, match="leading shape"):
        token_divergence_fused(h[:, :-1], w, t)


# ------------------------------------------------------------------------------- teacher head fused
def _teacher_head(n=(2, 7), hidden=9, vocab=29, dtype=torch.float32, seed=20, bias=True):
    g = torch.Generator().manual_seed(seed)
    th = torch.randn(*n, hidden, generator=g, dtype=dtype)
    tw = torch.randn(vocab, hidden, generator=g, dtype=dtype) * 0.7
    tb = torch.randn(vocab, generator=g, dtype=dtype) if bias else None
    return th, tw, tb


@pytest.mark.parametrize("divergence", TOKEN_DIVERGENCES)
@pytest.mark.parametrize("masked", [False, True])
def test_fused_teacher_head_equals_unfused(divergence, masked):
    h, w, b, _ = _head()
    th, tw, tb = _teacher_head()
    mask = (torch.rand(2, 7, generator=torch.Generator().manual_seed(5)) > 0.4) if masked else None
    kw = dict(divergence=divergence, temperature=1.5, num_valid=20, **PARAMS)
    t = F.linear(th, tw, tb)
    want, want_g = _value_and_grads(lambda a, c, d: reference(F.linear(a, c, d), t, mask, **kw), h, w, b)
    for chunk in (1, 3, None):
        got, got_g = _value_and_grads(lambda a, c, d: token_divergence_fused(
            a, c, None, mask, lm_head_bias=d, chunk_size=chunk, teacher_hidden=th, teacher_lm_head_weight=tw,
            teacher_lm_head_bias=tb, **kw), h, w, b)
        assert_close_rel(got, want)
        for x, y in zip(got_g, want_g):
            assert_close_rel(x, y)


class _LinearShapes(torch.overrides.TorchFunctionMode):
    """Records the output shape of every F.linear call."""

    def __init__(self):
        super().__init__()
        self.shapes = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func is F.linear:
            self.shapes.append(tuple(out.shape))
        return out


def test_fused_teacher_head_makes_chunk_logits_only_and_gives_the_teacher_no_gradient():
    h, w, _, _ = _head(dtype=torch.float64)
    th, tw, _ = _teacher_head(dtype=torch.float64, bias=False)
    th.requires_grad_()
    tw.requires_grad_()  # a teacher that is not frozen still gets no gradient here
    h.requires_grad_()
    with _LinearShapes() as mode:
        loss = token_divergence_fused(h, w, teacher_hidden=th, teacher_lm_head_weight=tw, divergence="jsd",
                                      chunk_size=4)
    assert mode.shapes and max(s[0] for s in mode.shapes) == 4  # 14 rows, never all of them at once
    assert len(mode.shapes) == 2 * 4  # student and teacher, 4 chunks each
    loss.backward()
    assert h.grad is not None and th.grad is None and tw.grad is None
    want = reference(h.detach() @ w.T, th.detach() @ tw.detach().T, divergence="jsd")
    assert_close_rel(loss.detach(), want, rel=1e-12)


def test_fused_teacher_head_gradcheck_float64():
    h, w, b, _ = _head(n=(2, 3), hidden=4, vocab=5, dtype=torch.float64, seed=11)
    th, tw, tb = _teacher_head(n=(2, 3), hidden=3, vocab=5, dtype=torch.float64)
    mask = torch.tensor([[True, False, True], [True, True, True]])
    fn = lambda a, c, d: token_divergence_fused(a, c, None, mask, lm_head_bias=d, divergence="skew_forward",
                                                temperature=1.3, chunk_size=2, teacher_hidden=th,
                                                teacher_lm_head_weight=tw, teacher_lm_head_bias=tb, **PARAMS)
    assert torch.autograd.gradcheck(fn, (h.requires_grad_(), w.requires_grad_(), b.requires_grad_()))


def test_fused_teacher_head_errors():
    h, w, b, t = _head()
    th, tw, tb = _teacher_head()
    with pytest.raises(ValueError, match="both teacher_logits and teacher_hidden"):
        token_divergence_fused(h, w, t, teacher_hidden=th, teacher_lm_head_weight=tw)
    with pytest.raises(ValueError, match="needs teacher_lm_head_weight"):
        token_divergence_fused(h, w, teacher_hidden=th)
    with pytest.raises(ValueError, match="give the teacher as teacher_logits"):
        token_divergence_fused(h, w)
    with pytest.raises(ValueError, match="disagree on the vocabulary"):
        token_divergence_fused(h, w, teacher_hidden=th, teacher_lm_head_weight=tw[:-1])
    with pytest.raises(ValueError, match="teacher_hidden .* leading shape"):
        token_divergence_fused(h, w, teacher_hidden=th[:, :-1], teacher_lm_head_weight=tw)
    with pytest.raises(ValueError, match="teacher_lm_head_bias"):
        token_divergence_fused(h, w, teacher_hidden=th, teacher_lm_head_weight=tw, teacher_lm_head_bias=tb[:-1])


# ------------------------------------------------------------------------------------ cross-entropy
def test_cross_entropy_chunked_and_fused_equal_f_cross_entropy():
    h, w, b, _ = _head(seed=13)
    y = torch.randint(0, 29, (2, 7), generator=torch.Generator().manual_seed(0))
    mask = torch.rand(2, 7, generator=torch.Generator().manual_seed(6)) > 0.3

    def ref(a, c, d):
        z = F.linear(a, c, d)
        return F.cross_entropy(z[mask], y[mask], reduction="sum") / 11

    want, want_g = _value_and_grads(ref, h, w, b)
    for chunk in (1, 4, None):
        got, got_g = _value_and_grads(lambda a, c, d: token_cross_entropy(F.linear(a, c, d), y, mask, num_valid=11,
                                                                          chunk_size=chunk), h, w, b)
        fused, fused_g = _value_and_grads(lambda a, c, d: token_cross_entropy_fused(
            a, c, y, mask, lm_head_bias=d, num_valid=11, chunk_size=chunk), h, w, b)
        for v, gs in ((got, got_g), (fused, fused_g)):
            assert_close_rel(v, want)
            for x, r in zip(gs, want_g):
                assert_close_rel(x, r)
