"""Deep mutual learning (Zhang et al., CVPR 2018): a cohort of students that teach each other online."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MaxMetric, MeanMetric

from .base import TeacherStudentModule
from .batch import unpack
from .losses.functional import kd_loss


@dataclass
class CohortInputs:
    """One batch as a cohort sees it: each student's logits and the labels."""

    logits: List[Tensor]
    target: Tensor

    @property
    def batch_size(self) -> int:
        return self.target.shape[0]


class MutualLearningModule(TeacherStudentModule):
    """Train K >= 2 students together, each with CE on the labels plus KD towards its peers.

    For student ``i`` with logits ``z_i``:

    ``loss_i = ce_weight · CE(z_i, y) + kd_weight · kd_i``, where (``peer_target``)

    - ``"each"`` (the paper): ``kd_i = 1/(K-1) Σ_{j≠i} kd_loss(z_i, z_j.detach(), T)``;
    - ``"mean"``: ``kd_i = kd_loss(z_i, T·log(mean_{j≠i} softmax(z_j / T)), T)``, i.e. the KL to the
      averaged softened peer distribution.

    ``kd_loss`` is Hinton's ``T² · KL(p_peer ‖ p_i)``; at the paper's ``T = 1`` it is the plain KL.
    The peers' predictions are detached, and all students are updated at once by a single optimizer
    over their parameters, on ``Σ_i loss_i`` (the paper alternates the updates within a step; the
    simultaneous form uses the same targets, computed before the step).

    Logged: ``train/loss`` (the sum), ``train/ce_<i>``, ``train/kd_<i>`` (``i`` = 0-based position in
    ``students``); ``val/acc_<i>``, ``val/acc`` = the best individual student's accuracy (what a user
    deploys), ``val/acc_ensemble`` = accuracy of the averaged probabilities, ``val/acc_best`` (running max
    of ``val/acc``); the same under ``test/``. ``forward`` runs the student with the best last
    validation accuracy (student 0 before any validation).

    The cohort is the base's ``student`` (an ``nn.ModuleList``, also reached as ``students``); there is no
    teacher. The optimizer, scheduler, checkpoints, finite-loss check and term logging are those of
    :class:`~kd_lightning.base.TeacherStudentModule`.
    """

    def __init__(self, students: Sequence[nn.Module], temperature: float = 1.0, ce_weight: float = 1.0,
                 kd_weight: float = 1.0, optimizer: Optional[Callable[..., torch.optim.Optimizer]] = None,
                 scheduler: Optional[Callable[..., Any]] = None, peer_target: str = "each",
                 input_key: Optional[str] = None, target_key: Optional[str] = None,
                 scheduler_interval: str = "epoch", monitor: str = "val/acc", check_finite: bool = True,
                 finite_check_interval: Optional[int] = None):
        students = list(students)
        if len(students) < 2:
            raise ValueError(f"mutual learning needs at least 2 students, got {len(students)}")
        if not all(isinstance(s, nn.Module) for s in students):
            raise TypeError("every student must be an nn.Module")
        if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"temperature must be a positive finite number, got {temperature!r}")
        for name, w in (("ce_weight", ce_weight), ("kd_weight", kd_weight)):
            if not (isinstance(w, (int, float)) and math.isfinite(w) and w >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {w!r}")
        if peer_target not in ("each", "mean"):
            raise ValueError(f"peer_target must be 'each' or 'mean', got {peer_target!r}")
        super().__init__(nn.ModuleList(students), None, None, optimizer, scheduler,
                         scheduler_interval=scheduler_interval, monitor=monitor, check_finite=check_finite,
                         finite_check_interval=finite_check_interval)
        self.save_hyperparameters(ignore=["students", "optimizer", "scheduler"])
        self.temperature = float(temperature)
        self.ce_weight, self.kd_weight = float(ce_weight), float(kd_weight)
        self.peer_target = peer_target
        k = len(students)
        for stage in ("val", "test"):
            setattr(self, f"_{stage}_acc", nn.ModuleList(MeanMetric() for _ in range(k)))
            setattr(self, f"_{stage}_acc_ensemble", MeanMetric())
        self.val_acc_best = MaxMetric()
        self.register_buffer("best_index", torch.zeros((), dtype=torch.long))

    @property
    def students(self) -> nn.ModuleList:
        return self.student

    @property
    def num_students(self) -> int:
        return len(self.students)

    def forward(self, x: Tensor) -> Tensor:
        return self.students[int(self.best_index)](x)

    # ------------------------------------------------------------------------------------ training
    def _peer_kd(self, i: int, logits: List[Tensor]) -> Tensor:
        peers = [logits[j].detach() for j in range(len(logits)) if j != i]
        if self.peer_target == "each":
            return sum(kd_loss(logits[i], p, self.temperature) for p in peers) / len(peers)
        t = self.temperature
        log_mean = torch.logsumexp(torch.stack([F.log_softmax(p.float() / t, dim=-1) for p in peers]), dim=0) \
            - math.log(len(peers))
        return kd_loss(logits[i], t * log_mean, t)

    def loss_inputs(self, batch: Any, stage: str) -> CohortInputs:
        b = unpack(batch, self.hparams.input_key, self.hparams.target_key)
        if b.y is None:
            raise ValueError("mutual learning trains on labelled batches (x, y)")
        return CohortInputs([s(b.x) for s in self.students], b.y)

    def terms_of(self, inputs: CohortInputs) -> Dict[str, Tensor]:
        """``{"loss": Σ_i loss_i, "ce_<i>": ..., "kd_<i>": ...}``."""
        terms: Dict[str, Tensor] = {}
        total: Optional[Tensor] = None
        for i, z in enumerate(inputs.logits):
            ce = F.cross_entropy(z.float(), inputs.target)
            kd = self._peer_kd(i, inputs.logits)
            loss_i = self.ce_weight * ce + self.kd_weight * kd
            total = loss_i if total is None else total + loss_i
            terms[f"ce_{i}"], terms[f"kd_{i}"] = ce, kd
        return {"loss": total, **terms}

    # ---------------------------------------------------------------------------------- evaluation
    def _eval_step(self, batch: Any, stage: str) -> None:
        b = unpack(batch, self.hparams.input_key, self.hparams.target_key)
        if b.y is None:
            raise ValueError(f"{stage} batches need labels to measure accuracy")
        metrics = getattr(self, f"_{stage}_acc")
        probs = None
        for i, s in enumerate(self.students):
            z = s(b.x).float()
            metrics[i].update((z.argmax(-1) == b.y).float())
            p = z.softmax(-1)
            probs = p if probs is None else probs + p
        getattr(self, f"_{stage}_acc_ensemble").update((probs.argmax(-1) == b.y).float())

    def _log_epoch(self, stage: str) -> Optional[Tensor]:
        metrics = getattr(self, f"_{stage}_acc")
        if not metrics[0].update_called:
            return None
        accs = torch.stack([m.compute() for m in metrics])
        for i, (m, acc) in enumerate(zip(metrics, accs)):
            self.log(f"{stage}/acc_{i}", acc)
            m.reset()
        ens = getattr(self, f"_{stage}_acc_ensemble")
        self.log(f"{stage}/acc_ensemble", ens.compute())
        ens.reset()
        best = accs.max()
        self.log(f"{stage}/acc", best, prog_bar=True)
        if stage == "val" and not self.trainer.sanity_checking:
            self.best_index.fill_(int(accs.argmax()))
        return best

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        acc = self._log_epoch("val")
        if acc is not None and not self.trainer.sanity_checking:
            self.val_acc_best.update(acc)
            self.log("val/acc_best", self.val_acc_best.compute())

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> Tensor:
        return self(unpack(batch, self.hparams.input_key, self.hparams.target_key).x)
