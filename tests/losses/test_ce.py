"""kd_lightning/losses/ce.py: cross-entropy over the labeled samples only, with label smoothing."""
from __future__ import annotations


import torch

from kd_lightning.losses import CE

from .helpers import assert_close_to, make_inputs


def test_masked_ce_with_label_smoothing_averages_over_labeled_samples_only():
    mask = torch.tensor([True, False, True, True, False, False])
    inp = make_inputs(labeled=mask)
    got = CE(label_smoothing=0.2)(inp)["ce"]
    want = torch.nn.functional.cross_entropy(inp.student_logits[mask], inp.target[mask], label_smoothing=0.2)
    assert_close_to(got, want)
    none = CE()(make_inputs(labeled=torch.zeros(6, dtype=torch.bool)))["ce"]
    assert float(none.detach()) == 0.0
