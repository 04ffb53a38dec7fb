"""The KDSVD loss module (kd_lightning/losses/kdsvd.py): stages in order, weight, settings checked."""
import pytest
import torch

from kd_lightning.losses import KDSVD, DistillInputs
from kd_lightning.losses.functional import kdsvd_loss

from .helpers import assert_close_to, logits


def test_module_applies_the_functional_to_its_stages_in_order():
    g = torch.Generator().manual_seed(0)
    s = {"a": torch.randn(4, 3, 8, generator=g), "b": torch.randn(4, 3, 4, generator=g)}
    t = {"a": torch.randn(4, 6, 8, generator=g), "b": torch.randn(4, 6, 4, generator=g)}
    inputs = DistillInputs(student_logits=logits(4, 5), teacher_logits=logits(4, 5, seed=1), student_features=s,
                           teacher_features=t)
    out = KDSVD(student_layers=["a", "b"], teacher_layers=["a", "b"], weight=3.0)(inputs)
    expected = kdsvd_loss([s["a"], s["b"]], [t["a"], t["b"]])
    assert_close_to(out["kdsvd"], expected)
    assert_close_to(out["loss"], 3.0 * expected)
    assert not KDSVD(student_layers=["a", "b"], teacher_layers=["a", "b"]).needs_build  # no adapters


def test_module_refuses_one_stage_and_bad_settings():
    with pytest.raises(ValueError, match="two layer pairs"):
        KDSVD(student_layers="a", teacher_layers="a")
    with pytest.raises(ValueError, match="over"):
        KDSVD(student_layers=["a", "b"], teacher_layers=["a", "b"], over="rows")
    with pytest.raises(ValueError, match="k must"):
        KDSVD(student_layers=["a", "b"], teacher_layers=["a", "b"], k=0)
