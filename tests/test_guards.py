"""Library misuse on the language-model path: networks without values, batches whose padding is unmarked."""
import pytest
import torch
from torch import nn

from kd_lightning.guards import attention_mask_of, check_materialized


def test_a_network_on_the_meta_device_is_named_in_one_line():
    with torch.device("meta"):
        teacher = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 10))
    check_materialized(nn.Linear(2, 2), "student")
    check_materialized(None, "teacher")
    with pytest.raises(ValueError, match=r"^the teacher network Sequential has 3 tensors on the meta device \(e.g. "
                                         r"'0.weight'\), which hold no values; load its weights first"):
        check_materialized(teacher, "teacher")
    teacher.to_empty(device="cpu")
    check_materialized(teacher, "teacher")  # materialised: accepted


def test_padding_is_never_taken_for_text():
    ids = torch.tensor([[5, 6, 7, 0, 0], [5, 6, 7, 8, 9]])
    given = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    assert attention_mask_of({"input_ids": ids, "attention_mask": given}, 0) is given
    with pytest.raises(ValueError, match=r"^the batch has no attention_mask but input_ids hold the pad token id 0 "
                                         r"at 2 positions, which would be distilled as text; add attention_mask"):
        attention_mask_of({"input_ids": ids}, 0)
    with pytest.raises(ValueError, match="pad token id is unknown"):
        attention_mask_of({"input_ids": ids}, None)
    # No pad id anywhere: nothing is padding, a mask of ones is exact.
    assert torch.equal(attention_mask_of({"input_ids": ids}, 3), torch.ones_like(ids))


def test_the_modules_refuse_a_network_on_the_meta_device_when_built():
    from kd_lightning import DistillationModule

    with torch.device("meta"):
        student = nn.Linear(4, 3)
    with pytest.raises(ValueError, match=r"^the student network Linear has 2 tensors on the meta device"):
        DistillationModule(student=student, teacher=nn.Linear(4, 3))
    with torch.device("meta"):
        teacher = nn.Linear(4, 3)
    with pytest.raises(ValueError, match=r"^the teacher network Linear has 2 tensors on the meta device"):
        DistillationModule(student=nn.Linear(4, 3), teacher=teacher)


class TinyLM(nn.Module):
    def __init__(self, vocab: int = 12):
        super().__init__()
        self.emb, self.head = nn.Embedding(vocab, 8), nn.Linear(8, vocab)

    def forward(self, input_ids, attention_mask=None):
        return self.head(self.emb(input_ids))


def test_a_language_model_batch_without_attention_mask_is_refused_before_padding_is_distilled():
    from kd_lightning import CausalLMDistillationModule
    from kd_lightning.losses import TokenKD

    module = CausalLMDistillationModule(student=TinyLM(), teacher=TinyLM(), loss=TokenKD())
    ids = torch.tensor([[5, 6, 7, 0, 0]])
    with pytest.raises(ValueError, match="no attention_mask and the pad token id is unknown"):
        module.training_step({"input_ids": ids, "labels": ids}, 0)
    # With the mask the same batch trains, and the padded positions count for nothing.
    out = module.training_step({"input_ids": ids, "labels": ids, "attention_mask": (ids != 0).long()}, 0)
    assert torch.isfinite(out)
