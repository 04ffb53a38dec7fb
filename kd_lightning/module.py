"""DistillationModule: a drop-in LightningModule that distills a frozen teacher into a student."""
from __future__ import annotations

import inspect
import math
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import lightning as L
import torch
from torch import Tensor, nn
from torchmetrics import MaxMetric, MeanMetric

from .batch import Batch, unpack
from .losses.base import DistillInputs, Loss
from .callbacks import FiniteLossCheck, TrainTermLogger
from .forward import Inputs, batch_size, call, logits_of
from .taps import FeatureTaps
from .teacher import FrozenTeacher, TeacherSource, build_teacher

TEACHER_PREFIX = "teacher."



def _default_objective(has_teacher: bool) -> Loss:
    if has_teacher:
        from .losses import KD

        return KD()
    from .losses import CE

    return CE()


class DistillationModule(L.LightningModule):
    """Train ``student`` against a frozen ``teacher`` with a distillation ``loss``.

    Args:
        student: any ``nn.Module`` returning logits ``[batch, classes]``.
        teacher: an ``nn.Module``, a list of them (an ensemble), a checkpoint path (with
            ``teacher_architecture``), or None (labels-only training, or teacher logits in the batch).
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
        super().__init__()
        # Networks, losses and factories are not hyperparameters: never pickle them into hparams.
        self.save_hyperparameters(ignore=["student", "teacher", "loss", "optimizer", "scheduler", "teacher_architecture",
                                          "batch_transform", "model"])
        if finite_check_interval is not None and int(finite_check_interval) < 1:
            raise ValueError(f"finite_check_interval must be >= 1 or None, got {finite_check_interval}")
        if batch_transform is not None and not callable(batch_transform):
            raise TypeError(f"batch_transform must be callable (x, y) -> (x, y, labeled), got {type(batch_transform).__name__}")
        if not isinstance(student, nn.Module):
            raise TypeError(f"student must be an nn.Module, got {type(student).__name__}")
        self.student = student
        self.loss = loss if loss is not None else _default_objective(teacher is not None)
        temperature = getattr(self.loss, "temperature", None) or 1.0
        self.teacher: Optional[FrozenTeacher] = build_teacher(
            teacher, teacher_architecture, ensemble_weights, ensemble_mode, temperature)
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.save_teacher = save_teacher
        self.batch_transform = batch_transform
        self._speedups_done = False
        self._shapes_checked = False
        # The latest training step's terms and batch size, for the step callbacks.
        self.train_terms: Dict[str, Tensor] = {}
        self.train_batch_size: Optional[int] = None
        self._taps: Optional[tuple] = None
        # nan_strategy="disable": no per-update NaN test, whose .any() would wait for the device every step
        # (a NaN then shows in the result instead).
        for stage in ("val", "test"):
            for name in ("acc", "acc_top5", "teacher_acc", "agreement", "loss"):
                setattr(self, f"_{stage}_{name}", MeanMetric(nan_strategy="disable"))
        self._check_networks()
        self.val_acc_best = MaxMetric()
        # Validation accuracy after each epoch (the run report plots it).
        self.val_history: list = []

    # ----------------------------------------------------------------------------------- forward
    def forward(self, x: Inputs) -> Tensor:
        return self.student_logits(x)

    def student_logits(self, x: Inputs) -> Tensor:
        """The student's logits for ``x``: a tensor, or keyword inputs (a Hugging Face batch)."""
        return logits_of(call(self.student, x), "student")

    def _ensure_taps(self) -> tuple:
        # Hooks are attached lazily so the module stays picklable (ddp_spawn) and detached on teardown.
        if self._taps is None:
            s_paths, t_paths = self.loss.student_taps, self.loss.teacher_taps
            if t_paths and self.teacher is None:
                raise ValueError("the loss needs teacher features but there is no teacher network")
            self._taps = (
                FeatureTaps(self.student, s_paths, "student") if s_paths else None,
                FeatureTaps(self.teacher.net, t_paths, "teacher") if t_paths else None,
            )
        return self._taps

    def setup(self, stage: str) -> None:
        # Shape-dependent adapters must exist before configure_optimizers() collects parameters.
        if stage == "fit" and self.loss.needs_build:
            self._build_objective()
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

    def _example_batch(self) -> Any:
        if self.example_input_array is not None:
            return self.example_input_array
        trainer = self.trainer
        if trainer.datamodule is not None:
            return next(iter(trainer.datamodule.train_dataloader()))
        try:  # fit(module, train_dataloaders=...): let the fit loop load its data now (it does so only once)
            trainer.fit_loop.setup_data()
            return next(iter(trainer.train_dataloader))
        except Exception:
            raise ValueError(
                f"{type(self.loss).__name__} builds adapters from the feature shapes and needs one example "
                "batch: fit with a datamodule or train_dataloaders, or set module.example_input_array") from None

    @torch.no_grad()
    def _build_objective(self) -> None:
        batch = self._example_batch()
        b = unpack(batch, self.hparams.input_key, self.hparams.target_key, self.hparams.index_key) \
            if not isinstance(batch, Tensor) else Batch(x=batch)
        was_training = self.student.training
        self.student.eval()  # a dry run must not move BatchNorm statistics
        try:
            s_taps, t_taps = self._ensure_taps()
            s_logits = self.student_logits(b.x)
            t_logits = self.teacher(b.x) if self.teacher is not None else b.teacher_logits
            inputs = DistillInputs(
                student_logits=s_logits, teacher_logits=t_logits, target=b.y,
                student_features=s_taps.pop() if s_taps is not None else {},
                teacher_features=t_taps.pop() if t_taps is not None else {}, index=b.index)
            self.loss.build(inputs)
        finally:
            self.student.train(was_training)

    def teardown(self, stage: str) -> None:
        for taps in self._taps or ():
            if taps is not None:
                taps.remove()
        self._taps = None

    def _run(self, batch: Any, stage: str) -> tuple:
        b: Batch = unpack(batch, self.hparams.input_key, self.hparams.target_key, self.hparams.index_key)
        if self.hparams.channels_last and isinstance(b.x, Tensor) and b.x.ndim == 4:
            b.x = b.x.contiguous(memory_format=torch.channels_last)
        if stage == "train" and self.batch_transform is not None:
            self._transform_batch(b)
        s_taps, t_taps = self._ensure_taps()
        # Teacher first: the student's forward and backward then run back to back on warm caches
        # (1-4% faster per MNIST-1D step on a CPU than the other order, in a hand-written loop).
        teacher_logits, t_feats = b.teacher_logits, {}
        if self.teacher is not None and (teacher_logits is None or t_taps is not None):
            teacher_logits = self.teacher(b.x)
            t_feats = t_taps.pop() if t_taps is not None else {}
        student_logits = self.student_logits(b.x)
        s_feats = s_taps.pop() if s_taps is not None else {}
        if not self._shapes_checked:
            self._check_shapes(student_logits, teacher_logits, b, stage)
        inputs = DistillInputs(
            student_logits=student_logits, teacher_logits=teacher_logits, target=b.y,
            student_features=s_feats, teacher_features=t_feats,
            epoch=float(self.current_epoch + 1), index=b.index, labeled=b.labeled,
        )
        # Losses are computed in fp32 whatever the autocast precision of the networks.
        with torch.autocast(device_type=student_logits.device.type, enabled=False):
            terms = self.loss(inputs)
        return b, student_logits, teacher_logits, terms

    def _transform_batch(self, b: Batch) -> None:
        """Apply ``batch_transform`` in place; the teacher then labels the transformed inputs."""
        if b.teacher_logits is not None:
            if self.teacher is None:
                raise ValueError(
                    "batch_transform changes the inputs, but the teacher logits come from the batch (a teacher "
                    "cache) and describe the untransformed inputs; distill with a live teacher (no cache) to "
                    "use a batch transform")
            b.teacher_logits = None  # recomputed on the transformed inputs
        out = self.batch_transform(b.x, b.y)
        if not isinstance(out, (tuple, list)) or len(out) != 3:
            raise TypeError("batch_transform must return (x, y, labeled); labeled may be None")
        b.x, b.y, labeled = out
        if labeled is not None:
            b.labeled = labeled if b.labeled is None else (b.labeled & labeled)

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
    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        b, _, _, terms = self._run(batch, "train")
        # What the step callbacks read (TrainTermLogger, FiniteLossCheck): detached, still on the device.
        self.train_terms = {name: value.detach() for name, value in terms.items()}
        self.train_batch_size = batch_size(b.x)
        return terms["loss"]

    def configure_callbacks(self) -> List[L.Callback]:
        callbacks: List[L.Callback] = [TrainTermLogger()]
        if self.hparams.check_finite:
            callbacks.append(FiniteLossCheck(self.hparams.finite_check_interval))
        # Lightning asks again at test time: keep the ones a Trainer already holds (its own or ours).
        held = tuple(type(c) for c in self.trainer.callbacks)
        return [c for c in callbacks if not isinstance(c, held)]

    def _eval_step(self, batch: Any, stage: str) -> None:
        b, s_logits, t_logits, terms = self._run(batch, stage)
        if b.y is None:
            raise ValueError(f"{stage} batches need labels to measure accuracy")
        n = b.y.shape[0]
        pred = s_logits.argmax(-1)
        getattr(self, f"_{stage}_acc").update((pred == b.y).float())
        k = min(5, s_logits.shape[-1])
        if s_logits.shape[-1] > 5:
            top5 = (s_logits.topk(k, dim=-1).indices == b.y[:, None]).any(-1)
            getattr(self, f"_{stage}_acc_top5").update(top5.float())
        if t_logits is not None:
            t_pred = t_logits.argmax(-1)
            getattr(self, f"_{stage}_teacher_acc").update((t_pred == b.y).float())
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

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> Tensor:
        b = unpack(batch, self.hparams.input_key, self.hparams.target_key, self.hparams.index_key)
        return self.student_logits(b.x)

    # ------------------------------------------------------------------------------ optimization
    def trainable_parameters(self):
        """The student's and the loss's own parameters — never the teacher's."""
        params = [p for p in self.student.parameters() if p.requires_grad]
        params += [p for p in self.loss.parameters() if p.requires_grad]
        return params

    def configure_optimizers(self):
        factory = self.optimizer_factory or (lambda params: torch.optim.Adam(params, lr=1e-3))
        optimizer = factory(self.trainable_parameters())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer, **self._schedule_length())
        return {"optimizer": optimizer, "lr_scheduler": {
            "scheduler": scheduler, "interval": self.hparams.scheduler_interval, "monitor": self.hparams.monitor}}

    def _schedule_length(self) -> Dict[str, int]:
        """``{"total_steps": n}`` for a scheduler factory that takes ``total_steps`` and was given none
        (``kd_lightning.schedules.warmup_cosine``, ``OneCycleLR``): the length of this very fit."""
        try:
            param = inspect.signature(self.scheduler_factory).parameters.get("total_steps")
        except (TypeError, ValueError):
            return {}
        if param is None or param.default is not None:
            return {}
        try:
            steps = self.trainer.estimated_stepping_batches
        except RuntimeError:  # not attached to a Trainer
            return {}
        return {"total_steps": int(steps)} if math.isfinite(steps) else {}

    # ------------------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        if not self.save_teacher:
            state = checkpoint["state_dict"]
            for key in [k for k in state if k.startswith(TEACHER_PREFIX)]:
                del state[key]

    def on_load_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        # Checkpoints normally carry no teacher: take its weights from the live teacher so that
        # strict loading still catches every missing or unexpected student key.
        state = checkpoint["state_dict"]
        if self.teacher is None:  # a checkpoint saved with its teacher, loaded into a student-only module
            for key in [k for k in state if k.startswith(TEACHER_PREFIX)]:
                del state[key]
        elif not any(k.startswith(TEACHER_PREFIX) for k in state):
            for key, value in self.teacher.state_dict().items():
                state[TEACHER_PREFIX + key] = value
