"""SpanAlign: distillation between a teacher and a student with different tokenizers, span by span."""
from __future__ import annotations

from typing import Dict

from torch import Tensor

from .checks import check_temperature, check_weights
from .functional.xtok import span_alignment_loss
from .xtok import CrossTokenInputs, CrossTokenizerLoss


class SpanAlign(CrossTokenizerLoss):
    """``ce_weight · CE + span_weight · span + next_weight · next`` over the spans both tokenizations share.

    The text of each row is cut into the smallest spans whose edges are token boundaries in both
    tokenizations (:func:`~kd_lightning.lm.xtok.align_tokens`). Then
    (:func:`~kd_lightning.losses.functional.span_alignment_loss`):

    * ``span``: for every span, the teacher's and the student's probability of its text given the text
      before it — by the chain rule, the sum of its tokens' log-probabilities under teacher forcing — are
      matched by the Bernoulli KL ``P_t log(P_t/P_s) + (1−P_t) log((1−P_t)/(1−P_s))``, averaged over spans;
    * ``next``: at every span edge (the last token of a span in both tokenizations), both models predict the
      first token of the same next span from the same text. Where that next token is the same string in
      both (and so in both vocabularies), the two next-token distributions are compared by the KL over the
      strings both vocabularies hold, each renormalised over them (``kl``); elsewhere — the next tokens
      differ — by ULD, the sorted-probability distance (``uld``). ``next`` averages both over all edges;
      both use temperature ``T``.

    Positions inside a span (where the two tokenizations disagree) get only the span term and CE. The idea
    is the one behind TRL's GOLD and NeMo RL's cross-tokenizer loss; this form is the project's own.
    Logged: ``ce``, ``span``, ``next`` and its two parts ``kl`` and ``uld`` (each a mean over its own edges).
    """

    def __init__(self, ce_weight: float = 1.0, span_weight: float = 1.0, next_weight: float = 1.0,
                 temperature: float = 1.0):
        super().__init__()
        w = check_weights(ce_weight=ce_weight, span_weight=span_weight, next_weight=next_weight)
        self.ce_weight, self.span_weight, self.next_weight = w["ce_weight"], w["span_weight"], w["next_weight"]
        self.temperature = check_temperature(temperature)
        self.needs_teacher = self.span_weight > 0 or self.next_weight > 0
        self.needs_target = self.ce_weight > 0

    def forward(self, inputs: CrossTokenInputs) -> Dict[str, Tensor]:
        ce = self.ce(inputs)
        if not self.needs_teacher:
            return {"loss": self.total((self.ce_weight, ce)), "ce": ce}
        if inputs.teacher_logits is None or inputs.student_span is None or inputs.student_shared_ids is None:
            raise ValueError("SpanAlign needs the teacher's logits, the alignment (student_span, teacher_span, "
                             "student_edge, teacher_edge) and the shared token ids; train it with "
                             "CausalLMDistillationModule(teacher_tokenizer=..., student_tokenizer=...) on batches "
                             "from kd_lightning.lm.xtok.CrossTokenizerCollate")
        terms = span_alignment_loss(
            inputs.student_logits, inputs.teacher_logits, inputs.student_input_ids, inputs.teacher_input_ids,
            inputs.student_span, inputs.teacher_span, inputs.student_edge, inputs.teacher_edge,
            inputs.student_shared_ids, inputs.teacher_shared_ids, temperature=self.temperature)
        out = {k: terms[k] for k in ("span", "next", "kl", "uld")}
        out["loss"] = self.total((self.ce_weight, ce), (self.span_weight, terms["span"]),
                                 (self.next_weight, terms["next"]))
        out["ce"] = ce
        return out

    def extra_repr(self) -> str:
        return (f"ce_weight={self.ce_weight}, span_weight={self.span_weight}, next_weight={self.next_weight}, "
                f"temperature={self.temperature}")
