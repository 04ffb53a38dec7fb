"""CRD's two ways of scoring the memory bank (kd_lightning/losses/crd.py) give the same loss and gradients."""
import copy

import torch

from kd_lightning.losses import CRD, DistillInputs


class GatherRows(CRD):
    def scores_whole_bank(self, rows, dim):
        return False


def batch(seed, b=12):
    g = torch.Generator().manual_seed(seed)
    return DistillInputs(student_logits=torch.randn(b, 5, generator=g), teacher_logits=torch.randn(b, 5, generator=g),
                         student_features={"e": torch.randn(b, 6, generator=g).requires_grad_()},
                         teacher_features={"e": torch.randn(b, 9, generator=g)},
                         index=torch.randperm(40, generator=g)[:b])


def test_whole_bank_scores_equal_the_gathered_rows():
    torch.manual_seed(0)
    whole = CRD(student_layers="e", teacher_layers="e", num_data=40, feat_dim=8, num_negatives=16384)
    whole.build(batch(0))
    rows = GatherRows(student_layers="e", teacher_layers="e", num_data=40, feat_dim=8, num_negatives=16384)
    rows.build(batch(0))
    rows.load_state_dict(copy.deepcopy(whole.state_dict()))
    assert whole.scores_whole_bank(whole.num_negatives + 1, 8)
    for step in range(1, 4):  # several steps: the banks and the normalising constants evolve the same way
        a, b = batch(step), batch(step)
        torch.manual_seed(step)
        out_a = whole(a)
        torch.manual_seed(step)
        out_b = rows(b)
        out_a["loss"].backward()
        out_b["loss"].backward()
        torch.testing.assert_close(out_a["crd"], out_b["crd"])
        torch.testing.assert_close(a.student_features["e"].grad, b.student_features["e"].grad)
        torch.testing.assert_close(whole.memory_student, rows.memory_student)
