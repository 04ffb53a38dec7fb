"""DistillationModule: a drop-in LightningModule that distills a frozen teacher into a student."""
from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Sequence, Union

import torch
from torch import Tensor, nn
from torchmetrics import MaxMetric, MeanMetric

from .base import TeacherStudentModule
from .batch import Batch, unpack
from .forward import Inputs, call, logits_of
from .losses.base import CLASSIFIER, DistillInputs, Loss
from .signal import carries_outputs, teacher_signal
from .teacher import TeacherSource, build_teacher


def _default_objective(has_teacher: bool) -> Loss:
    if has_teacher:
        from .losses import KD

        return KD()
    from .losses import CE

    return CE()


class DistillationModule(TeacherStudentModule):
    """Train ``student`` against a frozen ``teacher`` with a distillation ``loss``.

    Args:
        student: any ``nn.Module`` returning logits ``[batch, classes]``.
        teacher: an ``nn.Module``, a list of them (an ensemble), a checkpoint path (with
            ``teacher_architecture``), or None (labels-only training, or stored teacher outputs in the
            batch). It becomes the module's ``teacher_signal`` (:mod:`kd_lightning.signal`).
        loss: an :class:`~kd_lightning.losses.Loss`; default ``KD()`` with a teacher, ``CE()`` without.
        optimizer: a callable ``params -> Optimizer`` such as ``functools.partial(torch.optim.SGD, lr=0.05)``.
        scheduler: optional callable ``optimizer -> LRScheduler``; stepped every ``scheduler_interval``.
        input_key / target_key: keys of dict batches (common names are found without them). A batch with
            ``input_ids`` (Hugging Face) passes every key but the target to the networks as keyword
            arguments; a list of keys passes exactly those. Outputs with ``.logits`` (Hugging Face),
            dicts with ``"logits"`` and ``(logits, ...)`` tuples are read as logits.
        save_teacher: keep the teacher's weights in checkpoints (off: a student checkpoint stays small).
        ensemble_weights / ensemble_mode: for a teacher list, per-teacher weights and whether softened
            probabilities (``"probs"``) or logits (``"logits"``) are averaged.
        check_finite: stop with an error naming the term when the loss becomes NaN or infinite.
        finite_check_interval: test the loss every this many steps (None: every step on the CPU, where the
            test is free, and at every logging step on accelerators, where it waits for the device).
        batch_transform: callable ``(x, y) -> (x, y, labeled)`` applied to training batches before the
            teacher and the student see them (consistent teaching: :mod:`kd_lightning.augment`);
            ``labeled`` masks the samples whose label still holds (None: all).
        compile: ``torch.compile`` the student and the teacher in place (``nn.Module.compile``, so
            checkpoint keys stay unchanged) when training starts.
        channels_last: use the channels-last memory format for the networks and for 4-D inputs.

    Training terms are logged as ``train/<term>`` every ``log_every_n_steps`` steps (and at the end of
    each epoch) as the mean over the steps since the last log, so no step waits for the device
    (:class:`~kd_lightning.callbacks.TrainTermLogger` and
    :class:`~kd_lightning.callbacks.FiniteLossCheck`, added through ``configure_callbacks``).

    The teacher, checkpoints, optimizer, scheduler, loss adapters and callbacks are those of
    :class:`~kd_lightning.base.TeacherStudentModule`; this class says how a batch becomes a
    :class:`~kd_lightning.losses.DistillInputs` and measures accuracy. The loss must be of the classifier
    family: a token loss (``TokenKD``) is refused here.

    Example::

        module = DistillationModule(student, teacher, loss=KD(temperature=4.0, ce_weight=0.1, kd_weight=0.9),
                                    optimizer=functools.partial(torch.optim.SGD, lr=0.05, momentum=0.9))
        lightning.Trainer(max_epochs=240).fit(module, datamodule=my_datamodule)
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: Optional[TeacherSource] = None,
        loss: Optional[Loss] = None,
        optimizer: Optional[Callable[..., torch.optim.Optimizer]] = None,
        scheduler: Optional[Callable[..., Any]] = None,
        input_key: Union[None, str, Sequence[str]] = None,
        target_key: Optional[str] = None,
        index_key: str = "index",
        teacher_architecture: Optional[nn.Module] = None,
        ensemble_weights: Optional[Sequence[float]] = None,
        ensemble_mode: str = "probs",
        save_teacher: bool = False,
        scheduler_interval: str = "epoch",
        monitor: str = "val/acc",
        check_finite: bool = True,
        finite_check_interval: Optional[int] = None,
        batch_transform: Optional[Callable[..., Any]] = None,
        compile: bool = False,
        channels_last: bool = False,
    ):
        if batch_transform is not None and not callable(batch_transform):
            raise TypeError(f"batch_transform must be callable (x, y) -> (x, y, labeled), got {type(batch_transform).__name__}")
        if not isinstance(student, nn.Module):
            raise TypeError(f"student must be an nn.Module, got {type(student).__name__}")
        loss = loss if loss is not None else _default_objective(teacher is not None)
        temperature = getattr(loss, "temperature", None) or 1.0
        frozen = build_teacher(teacher, teacher_architecture, ensemble_weights, ensemble_mode, temperature)
        # Without a teacher network the batches may carry stored outputs (dense or top-k) instead.
        super().__init__(student, teacher_signal(frozen, CLASSIFIER, stored=True), loss, optimizer, scheduler,
                         scheduler_interval=scheduler_interval, monitor=monitor, save_teacher=save_teacher,
                         check_finite=check_finite, finite_check_interval=finite_check_interval)
        # Networks, losses and factories are not hyperparameters: never pickle them into hparams.
        self.save_hyperparameters(ignore=["student", "teacher", "loss", "optimizer", "scheduler", "teacher_architecture",
                                          "batch_transform", "model"])
        self.batch_transform = batch_transform
        self._speedups_done = False
        self._shapes_checked = False
        # nan_strategy="disable": no per-update NaN test, whose .any() would wait for the device every step
        # (a NaN then shows in the result instead).
        for stage in ("val", "test"):
            for name in ("acc", "acc_top5", "teacher_acc", "agreement", "loss"):
                setattr(self, f"_{stage}_{name}", MeanMetric(nan_strategy="disable"))
        self._check_networks()
        self.val_acc_best = MaxMetric()
        self.val_acc_best.persistent(True)  # in checkpoints: a resumed fit logs the same running best
        # Validation accuracy after each epoch (the run report plots it).
        self.val_history: list = []

    # ----------------------------------------------------------------------------------- forward
    def forward(self, x: Inputs) -> Tensor:
        return self.student_logits(x)

    def student_logits(self, x: Inputs) -> Tensor:
        """The student's logits for ``x``: a tensor, or keyword inputs (a Hugging Face batch)."""
        return logits_of(call(self.student, x), "student")

    def setup(self, stage: str) -> None:
        super().setup(stage)
        self._apply_speedups()

    def _check_networks(self) -> None:
        """A teacher that cannot run beside the student is named before any batch."""
        if self.teacher is None:
            return
        t = next(iter(self.teacher.parameters()), None)
        s = next(iter(self.student.parameters()), None)
        if t is not None and t.is_meta:
            raise ValueError("the teacher's weights are on the meta device (never loaded); load them first, e.g. "
                             "teacher.load_state_dict(state, assign=True) or from_pretrained(...)")
        if t is not None and s is not None and t.dtype != s.dtype:
            raise ValueError(
                f"the teacher's weights are {t.dtype} but the student's are {s.dtype}; give both the same dtype "
                f"(e.g. teacher.to({s.dtype})) and choose the compute precision with Trainer(precision=...)")

    def _apply_speedups(self) -> None:
        # In setup(), i.e. in each (spawned) process: compiled modules do not pickle.
        if self._speedups_done:
            return
        nets = [self.student] + ([self.teacher.net] if self.teacher is not None else [])
        if self.hparams.channels_last:
            for net in nets:
                net.to(memory_format=torch.channels_last)
        if self.hparams.compile:
            for net in nets:
                net.compile()  # in place: parameters and state_dict keys keep their names (no "_orig_mod.")
        self._speedups_done = True

    def loss_inputs(self, batch: Any, stage: str) -> DistillInputs:
        if isinstance(batch, Tensor) and stage == "build":  # example_input_array: inputs only
            b = Batch(x=batch)
        else:
            b = unpack(batch, self.hparams.input_key, self.hparams.target_key, self.hparams.index_key)
        if self.hparams.channels_last and isinstance(b.x, Tensor) and b.x.ndim == 4:
            b.x = b.x.contiguous(memory_format=torch.channels_last)
        if stage == "train" and self.batch_transform is not None:
            batch = self._transform_batch(b, batch)
        s_taps = self.feature_taps()[0]
        # Teacher first: the student's forward and backward then run back to back on warm caches
        # (1-4% faster per MNIST-1D step on a CPU than the other order, in a hand-written loop).
        teacher = self.teacher_output(batch, b.x)
        student_logits = self.student_logits(b.x)
        s_feats = s_taps.pop() if s_taps is not None else {}
        width = student_logits.shape[-1]
        self.teacher_signal.check(teacher, width, getattr(self.loss, "temperature", None) or 1.0)  # once
        teacher_logits = teacher.dense(width)
        if not self._shapes_checked and stage != "build":
            self._check_shapes(student_logits, teacher_logits, b, stage)
        return DistillInputs(
            student_logits=student_logits, teacher_logits=teacher_logits, target=b.y,
            student_features=s_feats, teacher_features=teacher.features,
            epoch=float(self.current_epoch + 1), index=b.index, labeled=b.labeled,
        )

    def _transform_batch(self, b: Batch, batch: Any) -> Any:
        """Apply ``batch_transform`` to ``b`` in place; the teacher then labels the transformed inputs, so the
        stored outputs the batch may carry (which describe the untransformed inputs) are dropped: the
        returned batch is None."""
        if carries_outputs(batch) and self.teacher is None:
            raise ValueError(
                "batch_transform changes the inputs, but the teacher logits come from the batch (a teacher "
                "cache) and describe the untransformed inputs; distill with a live teacher (no cache) to "
                "use a batch transform")
        out = self.batch_transform(b.x, b.y)
        if not isinstance(out, (tuple, list)) or len(out) != 3:
            raise TypeError("batch_transform must return (x, y, labeled); labeled may be None")
        b.x, b.y, labeled = out
        if labeled is not None:
            b.labeled = labeled if b.labeled is None else (b.labeled & labeled)
        return None

    def _check_shapes(self, student_logits: Tensor, teacher_logits: Optional[Tensor], b: Batch, stage: str) -> None:
        if student_logits.ndim != 2:
            raise ValueError(f"the student must return logits [batch, classes]; got shape {tuple(student_logits.shape)}")
        if self.loss.needs_teacher and teacher_logits is None:
            raise ValueError(
                f"{type(self.loss).__name__} needs a teacher, but none was given and the batch carries no "
                "teacher logits; pass teacher=... or use loss=CE() for labels-only training")
        if stage == "train" and b.y is None and self.loss.needs_target:
            raise ValueError(
                f"the training batches carry no labels, but {type(self.loss).__name__} weighs a hard-label term "
                "(ce_weight > 0), which would be logged as 0 and train nothing; set ce_weight=0 for label-free "
                "distillation, or give the batches a target")
        if teacher_logits is not None and teacher_logits.shape[-1] != student_logits.shape[-1]:
            raise ValueError(
                f"class count mismatch: the teacher outputs {teacher_logits.shape[-1]} classes but the student "
                f"outputs {student_logits.shape[-1]}; build both with the data set's num_classes")
        if b.y is not None and b.y.numel() and b.y.dtype in (torch.int64, torch.int32):
            top = int(b.y.max())
            if top >= student_logits.shape[-1]:
                raise ValueError(
                    f"label {top} is out of range for a student with {student_logits.shape[-1]} outputs; "
                    "set the model's num_classes to the data set's class count")
        self._shapes_checked = True

    # -------------------------------------------------------------------------------- the steps
    def _eval_step(self, batch: Any, stage: str) -> None:
        inputs = self.loss_inputs(batch, stage)
        terms = self.terms_of(inputs)
        s_logits, t_logits, y = inputs.student_logits, inputs.teacher_logits, inputs.target
        if y is None:
            raise ValueError(f"{stage} batches need labels to measure accuracy")
        n = y.shape[0]
        pred = s_logits.argmax(-1)
        getattr(self, f"_{stage}_acc").update((pred == y).float())
        k = min(5, s_logits.shape[-1])
        if s_logits.shape[-1] > 5:
            top5 = (s_logits.topk(k, dim=-1).indices == y[:, None]).any(-1)
            getattr(self, f"_{stage}_acc_top5").update(top5.float())
        if t_logits is not None:
            t_pred = t_logits.argmax(-1)
            getattr(self, f"_{stage}_teacher_acc").update((t_pred == y).float())
            getattr(self, f"_{stage}_agreement").update((t_pred == pred).float())
        # One value per sample: a weighted update would be ignored under nan_strategy="disable".
        getattr(self, f"_{stage}_loss").update(terms["loss"].detach().float().expand(n))
        for name, value in terms.items():
            if name != "loss":
                self.log(f"{stage}/{name}", value.detach(), on_step=False, on_epoch=True, batch_size=n)

    def _log_epoch(self, stage: str) -> Optional[Tensor]:
        acc = None
        for name in ("acc", "acc_top5", "teacher_acc", "agreement", "loss"):
            metric = getattr(self, f"_{stage}_{name}")
            if metric.update_called:
                value = metric.compute()
                self.log(f"{stage}/{name}", value, prog_bar=name == "acc", sync_dist=False)
                if name == "acc":
                    acc = value
            metric.reset()
        return acc

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        acc = self._log_epoch("val")
        if acc is not None and not self.trainer.sanity_checking:
            self.val_acc_best.update(acc)
            self.val_history.append(float(acc))
            self.log("val/acc_best", self.val_acc_best.compute())

    def state_defaults(self) -> Dict[str, Tensor]:
        # Checkpoints written before the running best was saved still load strictly (as "none seen yet").
        return {"val_acc_best.max_value": self.val_acc_best.max_value.detach().clone()}

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> Tensor:
        b = unpack(batch, self.hparams.input_key, self.hparams.target_key, self.hparams.index_key)
        return self.student_logits(b.x)
