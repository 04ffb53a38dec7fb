"""What the cross-tokenizer losses share: their inputs and the student's own cross-entropy.

A teacher and a student with different tokenizers cannot be compared logit by logit (token ``j`` of one
vocabulary is not token ``j`` of the other, and position ``i`` of one sequence is not position ``i`` of the
other). :class:`CrossTokenInputs` carries both tokenizations of the same texts and their alignment
(made by :class:`~kd_lightning.lm.xtok.CrossTokenizerCollate`); :class:`CrossTokenizerLoss` is the base of
:class:`~kd_lightning.losses.ULD` and :class:`~kd_lightning.losses.SpanAlign`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from .base import TOKEN, Loss
from .functional.token import token_cross_entropy

IGNORE_INDEX = -100


@dataclass
class CrossTokenInputs:
    """One batch of the same texts under two tokenizers.

    ``student_logits [B, L_s, V_s]`` with the student's ``labels`` / ``attention_mask [B, L_s]`` (position
    ``i`` predicts token ``i + 1``; ``labels`` -100 = no loss); ``teacher_logits [B, L_t, V_t]`` with
    ``teacher_input_ids`` / ``teacher_attention_mask [B, L_t]``. The alignment: ``student_span`` /
    ``teacher_span`` (each token's counted span, -1 none), ``student_edge`` / ``teacher_edge [B, E]`` (pairs
    of positions that end the same text, -1 pads) and ``student_shared_ids`` / ``teacher_shared_ids [S]``
    (the token strings both vocabularies hold, entry by entry).
    """

    student_logits: Tensor
    labels: Tensor
    teacher_logits: Optional[Tensor]
    attention_mask: Tensor
    teacher_input_ids: Tensor
    teacher_attention_mask: Tensor
    student_input_ids: Tensor
    student_span: Optional[Tensor] = None
    teacher_span: Optional[Tensor] = None
    student_edge: Optional[Tensor] = None
    teacher_edge: Optional[Tensor] = None
    student_shared_ids: Optional[Tensor] = None
    teacher_shared_ids: Optional[Tensor] = None
    epoch: float = 0.0

    @property
    def batch_size(self) -> int:
        return self.labels.shape[0]


class CrossTokenizerLoss(Loss):
    """Base of the losses between a teacher and a student with different tokenizers (token family).

    ``ce(inputs)`` is the student's own next-token cross-entropy on its labels, a mean over its labelled
    positions. A module that trains one of these needs both tokenizers
    (:class:`~kd_lightning.CausalLMDistillationModule`'s ``teacher_tokenizer`` / ``student_tokenizer``)
    and batches from :class:`~kd_lightning.lm.xtok.CrossTokenizerCollate`.
    """

    families = (TOKEN,)
    temperature: float = 1.0
    ce_weight: float = 1.0

    def ce(self, inputs: CrossTokenInputs) -> Tensor:
        if self.ce_weight == 0:
            return torch.zeros((), dtype=torch.float32, device=inputs.student_logits.device)
        labels = inputs.labels
        live = inputs.attention_mask[:, 1:].bool()
        mask = (labels[:, 1:] != IGNORE_INDEX) & live
        # Position i predicts token i + 1: masks and targets over all L positions (the last never counts).
        full = torch.cat([mask, torch.zeros_like(mask[:, :1])], 1)
        target = torch.cat([labels[:, 1:].clamp_min(0), torch.zeros_like(labels[:, :1])], 1)
        return token_cross_entropy(inputs.student_logits, target, full)

    def total(self, *weighted) -> Tensor:
        loss = None
        for weight, term in weighted:
            if weight > 0:
                loss = weight * term if loss is None else loss + weight * term
        return loss
