"""SRD (kd_lightning/losses/srd.py, functional/feature.py): the projector loss by hand and against torchdistill."""
import pytest
import torch
from torch import nn

from kd_lightning.losses import SRD, DistillInputs
from kd_lightning.losses.functional import kd_loss, srd_loss

from .helpers import assert_close_to, logits


def test_srd_loss_by_hand():
    s = torch.tensor([[1.0, -2.0], [0.5, 0.0]])
    t = torch.tensor([[0.0, 0.0], [1.5, 1.0]])
    # |d| = 1, 2, 1, 1 -> sum of 4th powers 1 + 16 + 1 + 1 = 19
    assert_close_to(srd_loss(s, t, 4.0), torch.log(torch.tensor(19.0)))
    assert_close_to(srd_loss(s, t, 2.0), torch.log(torch.tensor(7.0)))
    with pytest.raises(ValueError, match="shape"):
        srd_loss(torch.randn(2, 3), torch.randn(2, 4))


def test_recipe_matches_torchdistill_srd_loss():
    from torchdistill.losses import mid_level as mid
    g = torch.Generator().manual_seed(0)
    fs, ft = torch.randn(8, 12, generator=g), torch.randn(8, 12, generator=g)
    zs, zt = logits(8, 10, seed=1, scale=3.0), logits(8, 10, seed=2, scale=3.0)
    ref = mid.SRDLoss("s", "output", "t", "output", ".", "output", ".", "output", exponent=4.0, temperature=1.0)
    value = ref({"s": {"output": fs}, ".": {"output": zs}}, {"t": {"output": ft}, ".": {"output": zt}})
    # torchdistill's total: 2 * feature distance + KL at T=1; ours: SRD(weight 2) composed with KD(T=1)
    assert_close_to(2 * srd_loss(fs, ft, 4.0) + kd_loss(zs, zt, 1.0), value)


def test_module_owns_a_linear_bn_projector_and_a_fixed_teacher_norm():
    inputs = DistillInputs(student_logits=logits(6, 5), teacher_logits=logits(6, 5, seed=3),
                           student_features={"e": torch.randn(6, 4, 3)}, teacher_features={"e": torch.randn(6, 9)})
    loss = SRD(pairs=[("e", "e")])
    loss.build(inputs)
    head = loss.adapters[0]
    assert isinstance(head.project[0], nn.Linear) and (head.project[0].in_features, head.project[0].out_features) == (4, 9)
    assert not list(head.teacher_norm.parameters())  # the teacher side has nothing to learn
    out = loss(inputs)
    ps, nt = head(inputs.student_features["e"], inputs.teacher_features["e"])
    assert_close_to(out["srd"], srd_loss(ps, nt, 4.0))
    assert_close_to(out["loss"], 2.0 * out["srd"])
    out["loss"].backward()
    assert head.project[0].weight.grad is not None
