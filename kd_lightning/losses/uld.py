"""ULD: Universal Logit Distillation between a teacher and a student with different tokenizers."""
from __future__ import annotations

from typing import Dict

from torch import Tensor

from .checks import check_temperature, check_weights
from .functional.xtok import uld_loss
from .xtok import CrossTokenInputs, CrossTokenizerLoss


class ULD(CrossTokenizerLoss):
    """``ce_weight · CE + uld_weight · ULD`` (Boizard et al. 2024, "Towards Cross-Tokenizer Distillation:
    the Universal Logit Distillation Loss for LLMs").

    Positions are paired by index, over the shorter of the two sequences of each row: student position
    ``i`` with teacher position ``i``, counted where both have a next token (``attention_mask`` of both at
    ``i + 1``). At each, with ``p↓`` / ``q↓`` the teacher's / student's next-token probabilities at
    temperature ``T`` sorted in decreasing order (the shorter vocabulary zero-padded),
    ``d = Σ_j |p↓_j − q↓_j|`` (:func:`~kd_lightning.losses.functional.uld_loss`); ULD is the mean of ``d``
    over the counted positions and CE the student's own mean cross-entropy on its labels. The paper tunes
    the weight λ (here ``uld_weight``) per task.

    ULD sees neither which token nor where in the text: the sorted distributions transfer how sure the
    teacher is, and index pairing matches positions that hold the same text only while both tokenizations
    happen to agree.
    """

    def __init__(self, ce_weight: float = 1.0, uld_weight: float = 1.0, temperature: float = 1.0):
        super().__init__()
        w = check_weights(ce_weight=ce_weight, uld_weight=uld_weight)
        self.ce_weight, self.uld_weight = w["ce_weight"], w["uld_weight"]
        self.temperature = check_temperature(temperature)
        self.needs_teacher = self.uld_weight > 0
        self.needs_target = self.ce_weight > 0

    def forward(self, inputs: CrossTokenInputs) -> Dict[str, Tensor]:
        ce = self.ce(inputs)
        uld = ce * 0.0
        if self.uld_weight > 0:
            if inputs.teacher_logits is None:
                raise ValueError("ULD: uld_weight > 0 needs the teacher's logits, got None; give the module a teacher")
            s, t = inputs.student_logits, inputs.teacher_logits
            length = min(s.shape[1], t.shape[1]) - 1
            mask = inputs.attention_mask[:, 1:length + 1].bool() & inputs.teacher_attention_mask[:, 1:length + 1].bool()
            uld = uld_loss(s[:, :length], t[:, :length], mask, temperature=self.temperature)
        return {"loss": self.total((self.ce_weight, ce), (self.uld_weight, uld)), "ce": ce, "uld": uld}

    def extra_repr(self) -> str:
        return f"ce_weight={self.ce_weight}, uld_weight={self.uld_weight}, temperature={self.temperature}"
