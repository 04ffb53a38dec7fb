"""Contrastive representation distillation (Tian et al., ICLR 2020) as a loss."""
from __future__ import annotations

import math
from typing import Dict, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import DistillInputs
from .feature_base import AdapterLoss, Shape
from .functional.relation import crd_nce_loss


class CRDHeads(nn.Module):
    """Linear projections of the student and teacher embeddings to ``feat_dim``, then L2-normalized."""

    def __init__(self, student_dim: int, teacher_dim: int, feat_dim: int):
        super().__init__()
        self.student = nn.Linear(student_dim, feat_dim)
        self.teacher = nn.Linear(teacher_dim, feat_dim)

    def forward(self, fs: Tensor, ft: Tensor) -> tuple:
        return F.normalize(self.student(fs), dim=1), F.normalize(self.teacher(ft), dim=1)


class CRD(AdapterLoss):
    """Contrastive representation distillation: ``{"loss": weight · crd, "crd": crd}``.

    Student and teacher embeddings (one pair, usually the classifier heads' inputs, flattened) are
    projected by trainable linear heads to ``feat_dim`` (128) and L2-normalized. Two memory banks of
    ``num_data`` × ``feat_dim`` hold a momentum average (``momentum`` 0.5) of every sample's student and
    teacher embedding, keyed by the sample index (``inputs.index``). For each sample, the teacher
    embedding is scored against the student bank and the student embedding against the teacher bank at
    the sample's own row (the positive) and ``num_negatives`` uniformly drawn rows (default 16,384,
    clamped to ``num_data - 1``): ``exp(v·m / τ) / Z`` with τ = ``nce_temperature`` (0.07) and ``Z`` fixed
    from the first batch as ``mean · num_data``. ``crd`` is the sum of the two NCE losses
    (:func:`~kd_lightning.losses.functional.crd_nce_loss`). Default weight 0.8 (CIFAR tables; compose
    with KD at weight 1).

    Data: the training set must yield sample indices, ``(x, y, index)`` — wrap it with
    :class:`kd_lightning.data.indexed.IndexedDataset` (or set ``data.return_index=true``);
    ``num_data`` is the size of that training set. The memory banks are updated only in training
    mode; in validation/test the loss contributes nothing (validation indices would address
    other samples). Under DDP each process keeps its own banks (no synchronisation).
    """

    needs_index = True

    def __init__(self, pairs: Optional[Sequence[Sequence[str]]] = None,
                 student_layers: Optional[Sequence[str] | str] = None,
                 teacher_layers: Optional[Sequence[str] | str] = None, num_data: Optional[int] = None,
                 weight: float = 0.8, feat_dim: int = 128, num_negatives: int = 16384,
                 nce_temperature: float = 0.07, momentum: float = 0.5):
        super().__init__(pairs, student_layers, teacher_layers, weight)
        if len(self.pairs) != 1:
            raise ValueError(f"CRD distills one embedding pair, got {len(self.pairs)} pairs: {self.pairs}")
        if num_data is None or int(num_data) < 2:
            raise ValueError(f"CRD needs num_data, the training set size (>= 2), got {num_data!r}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"CRD momentum must be in [0, 1), got {momentum!r}")
        if nce_temperature <= 0:
            raise ValueError(f"CRD nce_temperature must be > 0, got {nce_temperature!r}")
        self.num_data = int(num_data)
        self.feat_dim = int(feat_dim)
        self.num_negatives = max(1, min(int(num_negatives), self.num_data - 1))
        self.nce_temperature = float(nce_temperature)
        self.momentum = float(momentum)
        stdv = 1.0 / math.sqrt(self.feat_dim / 3.0)
        self.register_buffer("memory_student", torch.rand(self.num_data, self.feat_dim).mul_(2 * stdv).add_(-stdv))
        self.register_buffer("memory_teacher", torch.rand(self.num_data, self.feat_dim).mul_(2 * stdv).add_(-stdv))
        # normalization constants, set from the first training batch (-1: not yet)
        self.register_buffer("z_student", torch.tensor(-1.0))
        self.register_buffer("z_teacher", torch.tensor(-1.0))

    def make_adapter(self, student_shape: Shape, teacher_shape: Shape) -> nn.Module:
        return CRDHeads(math.prod(student_shape), math.prod(teacher_shape), self.feat_dim)

    def _check_index(self, index: Optional[Tensor], batch: int) -> Tensor:
        if index is None:
            raise ValueError(
                "CRD needs the dataset indices of the samples (inputs.index is None): wrap the dataset with "
                "kd_lightning.data.indexed.IndexedDataset / set data.return_index=true so batches are (x, y, index)")
        index = torch.as_tensor(index).reshape(-1).long()
        if index.numel() != batch:
            raise ValueError(f"CRD: got {index.numel()} indices for a batch of {batch}")
        if int(index.min()) < 0 or int(index.max()) >= self.num_data:
            raise ValueError(
                f"CRD: sample index {int(index.max())} outside [0, num_data={self.num_data}); num_data must be "
                "the size of the training set the indices come from")
        return index

    def scores_whole_bank(self, rows: int, dim: int) -> bool:
        """Score every bank row once (``[B, N]``, then pick the drawn ones) rather than copy the drawn rows
        (``[B, K+1, D]``): less memory traffic whenever ``N <= (K+1)·D``, which holds for CIFAR, MNIST-1D and
        ImageNet at 16,384 negatives. The values are the same either way."""
        return self.num_data <= rows * dim

    def forward(self, inputs: DistillInputs) -> Dict[str, Tensor]:
        self._require_built()
        (s, t), = self.features(inputs)
        if not self.training:
            # Memory banks are keyed by training indices: nothing meaningful to compute here.
            return {"loss": s.float().sum() * 0.0}
        b = s.shape[0]
        index = self._check_index(inputs.index, b).to(s.device)
        vs, vt = self.adapters[0](s.float().flatten(1), t.float().detach().flatten(1))

        k = self.num_negatives
        negatives = torch.randint(0, self.num_data, (b, k), device=s.device)
        rows = torch.cat([index[:, None], negatives], dim=1)  # [B, K+1], positive first
        # teacher embedding against the student bank, student embedding against the teacher bank
        if self.scores_whole_bank(rows.shape[1], vs.shape[1]):
            # The banks are cloned because backward needs them and they are updated in place below.
            score_t = (vt @ self.memory_student.clone().t()).gather(1, rows)
            score_s = (vs @ self.memory_teacher.clone().t()).gather(1, rows)
        else:
            with torch.no_grad():
                bank_s = self.memory_student[rows]  # [B, K+1, D]
                bank_t = self.memory_teacher[rows]
            score_t = torch.bmm(bank_s, vt[:, :, None]).squeeze(2)
            score_s = torch.bmm(bank_t, vs[:, :, None]).squeeze(2)
        out_t = torch.exp(score_t / self.nce_temperature)
        out_s = torch.exp(score_s / self.nce_temperature)
        with torch.no_grad():
            if float(self.z_student) < 0:
                self.z_student.fill_(float(out_s.mean()) * self.num_data)
            if float(self.z_teacher) < 0:
                self.z_teacher.fill_(float(out_t.mean()) * self.num_data)
        crd = crd_nce_loss(out_s / self.z_student, self.num_data) + crd_nce_loss(out_t / self.z_teacher, self.num_data)

        with torch.no_grad():
            for bank, v in ((self.memory_student, vs), (self.memory_teacher, vt)):
                mixed = bank[index] * self.momentum + v.detach() * (1.0 - self.momentum)
                bank.index_copy_(0, index, F.normalize(mixed, dim=1))
        return {"loss": self.weight * crd, "crd": crd}
