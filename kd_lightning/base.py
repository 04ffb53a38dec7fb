"""TeacherStudentModule: what every distillation module shares, whatever its model family.

A family module (:class:`~kd_lightning.DistillationModule` for classifiers,
:class:`~kd_lightning.CausalLMDistillationModule` for causal LMs, :class:`~kd_lightning.mutual.
MutualLearningModule`) says how a batch becomes its loss's inputs (:meth:`TeacherStudentModule.loss_inputs`)
and what it measures; this base owns the rest:

* the teacher's signal (:class:`~kd_lightning.signal.TeacherSignal`, ``teacher_signal``): a live network or
  weighted ensemble, stored dense outputs, stored top-k outputs or none, read through one call by every
  family; a live teacher's network (:class:`~kd_lightning.teacher.FrozenTeacher`, ``teacher``) is left
  out of checkpoints unless ``save_teacher`` and refilled from the live teacher on load;
* the trainable parameters: every parameter that requires a gradient outside the teacher (the student and
  the loss's adapters);
* the optimizer and scheduler; a scheduler factory that takes ``total_steps`` and got none is given the
  length of this very fit (``trainer.estimated_stepping_batches``);
* the loss's family check (a token loss on a classifier, or the reverse, is refused at construction);
* feature taps and the dry run that builds shape-dependent loss adapters before the optimizer exists;
* the finite-loss check and the term logging, as callbacks (:mod:`kd_lightning.callbacks`);
* the exact step-global reduction of a loss that is a sum over counted items (tokens), see
  :meth:`TeacherStudentModule.step_divisor`.
"""
from __future__ import annotations

import functools
import inspect
import math
from typing import Any, Callable, Dict, List, Optional, Tuple

import lightning as L
import torch
from torch import Tensor, nn

from .callbacks import FiniteLossCheck, TrainTermLogger
from .frozen import drop_frozen, restore_frozen
from .guards import check_materialized
from .losses.base import CLASSIFIER, check_family
from .taps import FeatureTaps
from .signal import NoTeacher, TeacherOutput, TeacherSignal

TEACHER_PREFIX = "teacher."
STUDENT_PREFIX = "student."


class TeacherStudentModule(L.LightningModule):
    """Base of the distillation modules; subclasses implement :meth:`loss_inputs` and their evaluation.

    Args:
        student: the trained network (for mutual learning, the cohort as an ``nn.ModuleList``).
        signal: where the teacher's distribution comes from (:mod:`kd_lightning.signal`); None: no teacher.
            A live signal's network becomes ``teacher``.
        loss: a :class:`~kd_lightning.losses.Loss` of this module's ``family`` (None: the subclass computes
            its terms itself, see :meth:`terms_of`).
        optimizer: ``params -> Optimizer``; None: ``default_optimizer``.
        scheduler: ``optimizer -> LRScheduler`` (``total_steps`` is filled when it takes one and got none).
        scheduler_interval: ``"epoch"`` or ``"step"``.
        monitor: the metric a plateau scheduler watches (None: none).
        save_teacher: keep the teacher's weights in checkpoints.
        check_finite / finite_check_interval: see :class:`~kd_lightning.callbacks.FiniteLossCheck`.
    """

    #: the loss family this module trains (see :mod:`kd_lightning.losses.base`).
    family: str = CLASSIFIER
    #: the optimizer when none is given.
    default_optimizer: Callable[..., torch.optim.Optimizer] = functools.partial(torch.optim.Adam, lr=1e-3)

    def __init__(self, student: nn.Module, signal: Optional[TeacherSignal] = None, loss: Optional[nn.Module] = None,
                 optimizer: Optional[Callable[..., torch.optim.Optimizer]] = None,
                 scheduler: Optional[Callable[..., Any]] = None, *, scheduler_interval: str = "epoch",
                 monitor: Optional[str] = None, save_teacher: bool = False, check_finite: bool = True,
                 finite_check_interval: Optional[int] = None):
        super().__init__()
        check_materialized(student, "student")
        frozen = signal.network if signal is not None else None
        check_materialized(frozen.net if frozen is not None else None, "teacher")  # named as the user built it
        if loss is not None:
            check_family(loss, self.family, type(self).__name__)
        if scheduler_interval not in ("step", "epoch"):
            raise ValueError(f"scheduler_interval={scheduler_interval!r} must be 'step' or 'epoch'")
        if finite_check_interval is not None and int(finite_check_interval) < 1:
            raise ValueError(f"finite_check_interval must be >= 1 or None, got {finite_check_interval}")
        self.student = student
        self.loss = loss
        self.teacher_signal = signal if signal is not None else NoTeacher()
        self.teacher = self.teacher_signal.network
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.scheduler_interval, self.monitor = scheduler_interval, monitor
        self.save_teacher = save_teacher
        self.check_finite, self.finite_check_interval = check_finite, finite_check_interval
        # The latest training step's detached terms and batch size, read by the step callbacks.
        self.train_terms: Dict[str, Tensor] = {}
        self.train_batch_size: Optional[int] = None
        self.taps: Optional[Tuple[Optional[FeatureTaps], Optional[FeatureTaps]]] = None
        # Step-global reduction state (see step_divisor).
        self.step_ref: Optional[Tensor] = None
        self.step_counts: Optional[Tensor] = None

    # ------------------------------------------------------------------------- what subclasses say
    def loss_inputs(self, batch: Any, stage: str) -> Any:
        """The loss's inputs for ``batch`` at ``stage`` (``"train"``, ``"val"``, ``"test"`` or ``"build"``,
        the dry run that shapes the adapters)."""
        raise NotImplementedError

    def terms_of(self, inputs: Any) -> Dict[str, Tensor]:
        """The loss of ``inputs``, in fp32 whatever the autocast precision of the networks."""
        with torch.autocast(device_type=self.device.type, enabled=False):
            return self.loss(inputs)

    def logged_terms(self, terms: Dict[str, Tensor], inputs: Any) -> Dict[str, Tensor]:
        """The terms the callbacks log and check (detached, left on the device)."""
        return {name: value.detach() for name, value in terms.items()}

    # ------------------------------------------------------------------------------ training step
    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        inputs = self.loss_inputs(batch, "train")
        terms = self.terms_of(inputs)
        # What the step callbacks read (TrainTermLogger, FiniteLossCheck): detached, still on the device.
        self.train_terms = self.logged_terms(terms, inputs)
        self.train_batch_size = inputs.batch_size
        return terms["loss"]

    def configure_callbacks(self) -> List[L.Callback]:
        callbacks: List[L.Callback] = [TrainTermLogger()]
        if self.check_finite:
            callbacks.append(FiniteLossCheck(self.finite_check_interval))
        # Lightning asks again at test time: keep the ones a Trainer already holds (its own or ours).
        held = tuple(type(c) for c in self.trainer.callbacks)
        return [c for c in callbacks if not isinstance(c, held)]

    def attached_trainer(self) -> Optional[L.Trainer]:
        try:
            return self.trainer
        except RuntimeError:  # not attached to a Trainer (a hand-written loop)
            return None

    def teacher_output(self, batch: Any, inputs: Any, attention_mask: Optional[Tensor] = None,
                       required: bool = False, fused_head: bool = False) -> TeacherOutput:
        """The teacher's signal for ``batch`` with its tapped features (see :mod:`kd_lightning.signal`;
        ``fused_head`` asks for hidden states and output layer instead of logits); called before the student
        runs, so the student's forward and backward follow each other on warm caches."""
        return self.teacher_signal(batch, inputs, attention_mask, taps=self.feature_taps()[1], required=required,
                                   fused_head=fused_head)

    # ------------------------------------------------------------------------------ feature taps
    def feature_taps(self) -> Tuple[Optional[FeatureTaps], Optional[FeatureTaps]]:
        """(student taps, teacher taps) of the loss's paths; attached lazily, so the module stays picklable
        (ddp_spawn), and removed on teardown."""
        if self.taps is None:
            s_paths = self.loss.student_taps if self.loss is not None else []
            t_paths = self.loss.teacher_taps if self.loss is not None else []
            if t_paths and self.teacher is None:
                raise ValueError("the loss needs teacher features but there is no teacher network")
            self.taps = (FeatureTaps(self.student, s_paths, "student") if s_paths else None,
                         FeatureTaps(self.teacher.net, t_paths, "teacher") if t_paths else None)
        return self.taps

    def teardown(self, stage: str) -> None:
        for taps in self.taps or ():
            if taps is not None:
                taps.remove()
        self.taps = None
        self.settle_teacher()

    # ------------------------------------------------------------------------------ the teacher's mode
    def on_fit_start(self) -> None:
        # Lightning's fit loop warns about every module whose ``training`` flag is off when training begins
        # (named_modules(), just before the on_train_start hooks). The teacher's eval mode is deliberate, so
        # its flags read "train" from here to on_train_start: the warning then counts only modules the user
        # left in eval mode (a student loaded with from_pretrained, say), as it should. In that span the
        # teacher runs only in the sanity check, under Lightning's own eval mode, and FrozenTeacher puts
        # itself back in eval mode before any forward.
        if self.teacher is not None:
            for module in self.teacher.modules():
                module.training = True

    def settle_teacher(self) -> None:
        """Put the teacher back in eval mode (its flags are lifted only between on_fit_start and on_train_start)."""
        if self.teacher is not None:
            self.teacher.train(False)

    # --------------------------------------------------------------------- loss adapters (dry run)
    def setup(self, stage: str) -> None:
        # Shape-dependent adapters must exist before configure_optimizers() collects the parameters, and
        # before a distributed strategy wraps the module.
        if stage == "fit" and self.loss is not None and self.loss.needs_build:
            batch = self.setup_example_batch()
            if batch is not None:
                self.build_loss(batch)

    def setup_example_batch(self) -> Any:
        """A batch for the dry run at setup: ``example_input_array``, else the datamodule's first training
        batch; None when neither exists yet (``fit(module, train_dataloaders=...)``, see
        :meth:`on_train_start`)."""
        if self.example_input_array is not None:
            return self.example_input_array
        datamodule = self.trainer.datamodule
        return next(iter(datamodule.train_dataloader())) if datamodule is not None else None

    def on_train_start(self) -> None:
        self.settle_teacher()  # see on_fit_start
        # Loaders given to fit() exist only now, after the optimizer was made: build the adapters from the
        # first batch and make the optimizer again, so that it holds them.
        if self.loss is None or not self.loss.needs_build:
            return
        if self.trainer.world_size > 1:
            raise ValueError(f"{type(self.loss).__name__} builds adapters from the feature shapes before training; "
                             "with several processes fit with a datamodule or set module.example_input_array")
        loaders = self.trainer.train_dataloader
        if isinstance(loaders, (list, tuple, dict)):
            raise ValueError(f"{type(self.loss).__name__} builds adapters from one training batch, but fit() got "
                             f"{len(loaders)} training loaders; fit with a datamodule or set module.example_input_array")
        batch = next(iter(loaders))
        self.build_loss(self.transfer_batch_to_device(batch, self.device, 0))
        self.trainer.strategy.setup_optimizers(self.trainer)

    @torch.no_grad()
    def build_loss(self, batch: Any) -> None:
        """Run the networks once on ``batch`` (student in eval mode, so BatchNorm statistics stay) and let the
        loss create its shape-dependent parameters."""
        was_training = self.student.training
        self.student.eval()
        try:
            self.loss.build(self.loss_inputs(batch, "build"))
        finally:
            self.student.train(was_training)

    # ------------------------------------------------------------------ step-global reduction
    def step_divisor(self, count: Tensor, inputs: Optional[Tensor] = None) -> Tensor:
        """Record this micro-batch's counted items and return the divisor its loss sum uses.

        Every term is ``Σ_{step's counted items} term / N`` with ``N`` the count of the whole optimizer step —
        all ``A = accumulate_grad_batches`` micro-batches on all ``W = world_size`` ranks — so gradients do
        not depend on how the step is split. ``N`` is known only after the last micro-batch, so it is
        deferred, exactly: each micro-batch divides by ``N_ref / (W·A)`` (``N_ref``: the previous step's
        ``N``, or ``A`` times the first micro-batch's count summed over ranks); Lightning's division by
        ``A`` and DDP's mean over ranks leave ``Σ ∇S / N_ref``; :meth:`on_before_optimizer_step` then sums
        the counts over ranks and scales every gradient by ``N_ref / N``. ``inputs`` (optional) is a second
        count reduced alongside (e.g. input tokens, for throughput).
        """
        world, accum = self.step_factors()
        if self.step_counts is None:  # the first micro-batch of an optimizer step
            self.step_counts = torch.zeros(2, dtype=torch.float64, device=count.device)
            if self.step_ref is None:
                # Any value all ranks agree on works (the scaling corrects it); this one is close to N.
                first = self.reduce_sum(count.to(torch.float64).reshape(1)).reshape(()) * accum
                self.step_ref = first.clamp_min(1.0)
        extra = inputs if inputs is not None else torch.zeros((), device=count.device)
        self.step_counts = self.step_counts + torch.stack([count.to(torch.float64), extra.to(torch.float64)])
        return self.step_ref / (world * accum)

    def step_factors(self) -> Tuple[int, int]:
        """``(world_size, accumulate_grad_batches)`` of the attached trainer, ``(1, 1)`` without one."""
        trainer = self.attached_trainer()
        if trainer is None:
            return 1, 1
        return int(trainer.world_size), int(trainer.accumulate_grad_batches)

    def reduce_sum(self, value: Tensor) -> Tensor:
        trainer = self.attached_trainer()
        if trainer is None or trainer.world_size == 1:
            return value
        return trainer.strategy.reduce(value, reduce_op="sum")

    def finish_step(self, optimizer: torch.optim.Optimizer) -> Optional[Tensor]:
        """Scale the step's gradients by ``N_ref / N`` (see :meth:`step_divisor`); return the step's counts
        summed over ranks (None when nothing was counted)."""
        if self.step_counts is None:
            return None
        counts = self.reduce_sum(self.step_counts)
        total = counts[0]
        scale = self.step_ref / total.clamp_min(1.0)  # float64: exact enough for any gradient dtype
        for group in optimizer.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.grad.mul_(scale.to(p.grad.dtype))
        self.step_ref = torch.where(total > 0, total, self.step_ref)
        self.step_counts = None
        return counts

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # After gradient unscaling, before clipping and the step; callbacks' hooks run before this one.
        self.finish_step(optimizer)

    # ------------------------------------------------------------------------------ optimization
    def trainable_parameters(self) -> List[nn.Parameter]:
        """Every parameter that requires a gradient outside the teacher: the student's and the loss's."""
        return [p for name, p in self.named_parameters() if p.requires_grad and not name.startswith(TEACHER_PREFIX)]

    def configure_optimizers(self):
        factory = self.optimizer_factory or self.default_optimizer
        optimizer = factory(self.trainable_parameters())
        if self.scheduler_factory is None:
            return optimizer
        config = {"scheduler": self.scheduler_factory(optimizer, **self.schedule_length()),
                  "interval": self.scheduler_interval}
        if self.monitor is not None:
            config["monitor"] = self.monitor
        return {"optimizer": optimizer, "lr_scheduler": config}

    def schedule_length(self) -> Dict[str, int]:
        """``{"total_steps": n}`` for a scheduler factory that takes ``total_steps`` and was given none
        (``kd_lightning.schedules.warmup_cosine``, ``OneCycleLR``): the length of this very fit."""
        try:
            param = inspect.signature(self.scheduler_factory).parameters.get("total_steps")
        except (TypeError, ValueError):
            return {}
        if param is None or param.default is not None:
            return {}
        trainer = self.attached_trainer()
        if trainer is None:
            return {}
        steps = trainer.estimated_stepping_batches
        return {"total_steps": int(steps)} if math.isfinite(steps) else {}

    # ------------------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        drop_frozen(checkpoint, self.student, STUDENT_PREFIX)  # e.g. a LoRA student's base: only what trains is saved
        if not self.save_teacher:
            state = checkpoint["state_dict"]
            for key in [k for k in state if k.startswith(TEACHER_PREFIX)]:
                del state[key]

    def state_defaults(self) -> Dict[str, Tensor]:
        """State entries a family module added after checkpoints were written, with a fresh module's values:
        an older checkpoint lacking them still loads strictly (every other missing key is still an error)."""
        return {}

    def on_load_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        # Checkpoints normally carry no teacher: take its weights from the live teacher, so strict loading
        # still catches every missing or unexpected student key. Frozen student weights come back the same way,
        # after a digest check that they are the ones the checkpoint was trained on.
        restore_frozen(checkpoint, self.student, STUDENT_PREFIX)
        state = checkpoint["state_dict"]
        for key, value in self.state_defaults().items():
            state.setdefault(key, value)
        if self.teacher is None:  # saved with its teacher, loaded into a module without one
            for key in [k for k in state if k.startswith(TEACHER_PREFIX)]:
                del state[key]
        elif not any(k.startswith(TEACHER_PREFIX) for k in state):
            for key, value in self.teacher.state_dict().items():
                state[TEACHER_PREFIX + key] = value
