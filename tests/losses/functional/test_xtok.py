"""Cross-tokenizer losses (kd_lightning/losses/functional/xtok.py) against hand computations."""
import math

import pytest
import torch

from kd_lightning.losses.functional import (shared_vocab_kl, span_alignment_loss, span_logprob_loss, span_logprobs,
                                            uld_loss)


def logits_of(*probs):
    """Logits whose softmax is each given probability vector."""
    return torch.tensor([[math.log(p) for p in row] for row in probs], dtype=torch.float64)


def test_uld_sorts_pads_and_averages_over_counted_positions():
    # Position 0: teacher [.1 .6 .2 .1] sorts to [.6 .2 .1 .1]; student [.2 .5 .3] to [.5 .3 .2] padded with 0:
    # |.6-.5| + |.2-.3| + |.1-.2| + |.1-0| = 0.4. Position 1: teacher uniform over 4, student over 3:
    # 3·|.25-1/3| + |.25-0|.
    teacher = logits_of([0.1, 0.6, 0.2, 0.1], [0.25, 0.25, 0.25, 0.25])
    student = logits_of([0.2, 0.5, 0.3], [1 / 3, 1 / 3, 1 / 3])
    assert float(uld_loss(student[:1], teacher[:1])) == pytest.approx(0.4)
    second = 3 * abs(0.25 - 1 / 3) + 0.25
    assert float(uld_loss(student, teacher)) == pytest.approx((0.4 + second) / 2)
    assert float(uld_loss(student, teacher, torch.tensor([False, True]))) == pytest.approx(second)
    same = logits_of([0.3, 0.7])
    assert float(uld_loss(same, logits_of([0.7, 0.3]))) == pytest.approx(0.0, abs=1e-12)


def test_uld_temperature_softens_both_sides():
    # T=2: softmax(log p / 2) ∝ sqrt(p): teacher [.64 .36] -> [.8 .6]/1.4 = [4/7 3/7]; student [.5 .5] stays.
    d = uld_loss(logits_of([0.5, 0.5]), logits_of([0.64, 0.36]), temperature=2.0)
    assert float(d) == pytest.approx(abs(4 / 7 - 0.5) + abs(3 / 7 - 0.5))


def test_uld_gradient_reaches_the_student_and_nothing_counted_is_zero():
    s = torch.randn(2, 3, 5, requires_grad=True)
    t = torch.randn(2, 3, 7)
    uld_loss(s, t).backward()
    assert s.grad.abs().sum() > 0
    zero = uld_loss(s, t, torch.zeros(2, 3, dtype=torch.bool))
    assert float(zero.detach()) == 0.0 and zero.requires_grad
    with pytest.raises(ValueError, match="same leading shape"):
        uld_loss(s, t[:, :2])


def test_span_logprob_loss_is_the_bernoulli_kl_of_the_span_probabilities():
    a, b = math.log(0.5), math.log(0.25)  # teacher P_t = .5, student P_s = .25
    expected = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    s = torch.tensor([[b, math.log(0.9)]], dtype=torch.float64, requires_grad=True)
    t = torch.tensor([[a, math.log(0.9)]], dtype=torch.float64)
    loss = span_logprob_loss(s, t, torch.tensor([[True, False]]))
    assert float(loss) == pytest.approx(expected)
    loss.backward()
    # d/db = (P_s − P_t) / (1 − P_s) = (.25 − .5) / .75: the student's span probability rises toward the teacher's.
    assert float(s.grad[0, 0]) == pytest.approx(-1 / 3)
    assert float(s.grad[0, 1]) == 0.0
    # Equal probabilities: no loss; a span both models are certain of stays finite.
    assert float(span_logprob_loss(t, t)) == pytest.approx(0.0, abs=1e-12)
    certain = torch.zeros(1, 1, dtype=torch.float64)
    assert math.isfinite(float(span_logprob_loss(certain, torch.full((1, 1), math.log(0.5), dtype=torch.float64))))


def test_span_logprobs_sums_each_span_s_tokens():
    lp = torch.tensor([[0.0, -1.0, -2.0, -4.0, -8.0]])
    spans = torch.tensor([[-1, 0, 0, 1, -1]])
    assert span_logprobs(lp, spans, 2).tolist() == [[-3.0, -4.0]]


def test_shared_vocab_kl_renormalises_over_the_shared_strings():
    # Teacher vocabulary of 3, student of 4; shared strings: teacher ids [0, 2] = student ids [3, 1].
    teacher = logits_of([0.2, 0.5, 0.3])
    student = logits_of([0.1, 0.3, 0.2, 0.4])
    p = [0.4, 0.6]  # teacher [.2 .3] renormalised
    q = [4 / 7, 3 / 7]  # student [.4 .3] renormalised
    expected = sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
    got = shared_vocab_kl(student, teacher, torch.tensor([3, 1]), torch.tensor([0, 2]))
    assert float(got) == pytest.approx(expected)


def test_span_alignment_terms_by_hand():
    # Text "abcde". Student tokens "a" "b" "cde" (ids 0 1 2), teacher tokens "ab" "cd" "e" (ids 0 1 2).
    # Common boundaries: 2 (after "b" / "ab") and 5. Span 0 = "cde": student token 2, teacher tokens 1 and 2.
    # One edge at 2: student position 1, teacher position 0, predicting "cde" and "cd" (different strings).
    s_ids, t_ids = torch.tensor([[0, 1, 2]]), torch.tensor([[0, 1, 2]])
    s_probs = [[0.2, 0.3, 0.5], [0.1, 0.2, 0.7], [0.3, 0.3, 0.4]]
    t_probs = [[0.1, 0.8, 0.1], [0.2, 0.2, 0.6], [0.5, 0.25, 0.25]]
    s_logits, t_logits = logits_of(*s_probs)[None], logits_of(*t_probs)[None]
    shared_s, shared_t = torch.tensor([0, 1]), torch.tensor([2, 0])  # neither "cde" (s 2) nor "cd" (t 1) is shared
    terms = span_alignment_loss(s_logits, t_logits, s_ids, t_ids, torch.tensor([[-1, -1, 0]]),
                                torch.tensor([[-1, 0, 0]]), torch.tensor([[1]]), torch.tensor([[0]]),
                                shared_s, shared_t)
    p_s = 0.7  # student: P(token 2 | position 1)
    p_t = 0.8 * 0.6  # teacher: P(token 1 | position 0) · P(token 2 | position 1)
    span = p_t * math.log(p_t / p_s) + (1 - p_t) * math.log((1 - p_t) / (1 - p_s))
    assert float(terms["span"]) == pytest.approx(span)
    # The edge: ULD between student position 1 [.7 .2 .1] and teacher position 0 [.8 .1 .1].
    assert float(terms["uld"]) == pytest.approx(0.1 + 0.1 + 0.0)
    assert float(terms["next"]) == pytest.approx(0.2)
    assert float(terms["edges"]) == 1 and float(terms["shared_edges"]) == 0


def test_span_alignment_uses_shared_kl_where_the_next_token_is_the_same_string():
    # Same texts; now the next tokens at the edge are the same string: student id 2 = teacher id 1.
    s_ids, t_ids = torch.tensor([[0, 1, 2]]), torch.tensor([[0, 1, 2]])
    s_logits = logits_of([0.2, 0.3, 0.5], [0.1, 0.2, 0.7], [0.3, 0.3, 0.4])[None]
    t_logits = logits_of([0.1, 0.8, 0.1], [0.2, 0.2, 0.6], [0.5, 0.25, 0.25])[None]
    shared_s, shared_t = torch.tensor([2, 0]), torch.tensor([1, 0])
    terms = span_alignment_loss(s_logits, t_logits, s_ids, t_ids, torch.tensor([[-1, -1, 0]]),
                                torch.tensor([[-1, 0, 0]]), torch.tensor([[1]]), torch.tensor([[0]]),
                                shared_s, shared_t)
    p = [0.8 / 0.9, 0.1 / 0.9]  # teacher position 0 over (t1, t0)
    q = [0.7 / 0.8, 0.1 / 0.8]  # student position 1 over (s2, s0)
    kl = sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
    assert float(terms["kl"]) == pytest.approx(kl)
    assert float(terms["next"]) == pytest.approx(kl)
    assert float(terms["shared_edges"]) == 1
