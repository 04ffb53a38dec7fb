"""The default job's recipe, patient and consistent distillation (Beyer et al. 2022;
conf/experiment/mnist1d_patient.yaml, and mnist1d_paper_patient for the paper's models): its pieces compose
as kd-train builds them (kd_lightning.app.build).

* consistent: the teacher labels exactly the mixed-up input the student is trained on, in every step;
* KL only: the composed objective has no CE term (ce_weight 0);
* patient: the per-step cosine schedule is sized to each stage's own fit and reaches its final lr.
"""
from __future__ import annotations

from typing import List

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from helpers import C, D, Spy
from kd_lightning import DistillationModule
from kd_lightning.app.build import build_loss, build_module_factory
from kd_lightning.augment import Mixup
from kd_lightning.losses import CE, KD

N, B = 32, 8  # samples, batch: 4 steps an epoch (features D and classes C as tests/helpers.py)
RECIPES = ["", "experiment=mnist1d_patient", "experiment=mnist1d_paper_patient"]


def loader(seed: int = 0) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(N, D, generator=g), torch.randint(0, C, (N,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=B, shuffle=False)


@pytest.fixture
def fit_trainer(make_trainer):
    """Epoch-based fits without validation."""
    return lambda callbacks=(), **kw: make_trainer(**{"max_steps": -1, "max_epochs": 3, "limit_val_batches": 0,
                                                     "callbacks": list(callbacks), **kw})


@pytest.fixture
def compose_train(compose):
    return lambda *overrides: compose(*[o for o in overrides if o])


class LrTrace(L.Callback):
    """The learning rate of every optimizer step, read after the scheduler has stepped."""

    def __init__(self):
        self.lrs: List[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])


def recipe_module(cfg, teacher: nn.Module, student: nn.Module) -> DistillationModule:
    """The student stage as kd_lightning.app.pipeline.distill_student builds it from ``cfg``."""
    return build_module_factory(cfg.module)(student=student, teacher=teacher, loss=build_loss(cfg.distill),
                                            batch_transform=instantiate(cfg.distill.batch_transform))


# ------------------------------------------------------------------------------------ the configs
def test_the_default_job_is_the_patient_consistent_recipe(compose_train):
    default, named = compose_train(), compose_train("experiment=mnist1d_patient")
    assert default == named
    assert default.distill.name == "patient_consistent" and default.distill.teacher_outputs is False
    assert default.distill.batch_transform.p == 0.3 and default.data.transfer_samples == 8000
    assert default.data.transfer_samples > 0 and default.baseline.enabled
    assert default.optim.scheduler._target_ == "kd_lightning.schedules.warmup_cosine"
    assert default.optim.scheduler_interval == "step"
    # Patient: the student stage (and the baseline, for a fair comparison) runs longer than the earlier 40 epochs.
    assert default.trainer.max_epochs > 40
    old = compose_train("experiment=mnist1d_kd")
    assert (old.distill.name, old.optim.scheduler, old.trainer.max_epochs, old.teacher_fit.max_epochs) == ("kd", None, 40, 40)


def test_the_paper_variant_keeps_the_paper_models_and_adds_the_recipe(compose_train):
    paper, patient = compose_train("experiment=mnist1d_paper"), compose_train("experiment=mnist1d_paper_patient")
    assert paper.distill.name == "kd" and paper.optim.scheduler is None  # the paper's setting is unchanged
    for key in ("teacher", "student"):
        assert patient[key] == paper[key]
    assert patient.data.val_fraction == 0.0 and patient.test_ckpt == "last"
    assert patient.teacher_fit.max_epochs == paper.teacher_fit.max_epochs == 150  # the paper's 6,000 teacher steps
    assert patient.distill.name == "function_matching" and patient.data.transfer_samples >= 20000


@pytest.mark.parametrize("overrides", RECIPES)
def test_the_recipe_objective_is_kl_only(compose_train, overrides):
    cfg = compose_train(overrides)
    objective = build_loss(cfg.distill)
    assert isinstance(objective, KD)
    assert objective.ce_weight == 0.0 and objective.kd_weight == 1.0 and objective.temperature == 1.0
    assert not objective.needs_target  # mixed samples carry no hard label; nothing asks for one
    assert isinstance(instantiate(cfg.distill.batch_transform), Mixup)


# ----------------------------------------------------------------------------------- consistency
@pytest.mark.parametrize("overrides", RECIPES)
def test_the_teacher_labels_the_same_mixed_input_the_student_sees(compose_train, fit_trainer, overrides):
    cfg = compose_train(overrides)
    teacher, student = Spy(0), Spy(1)
    data = loader()
    raw = [x for x, _ in data]
    steps = 2 * len(raw)
    fit_trainer(max_epochs=2).fit(recipe_module(cfg, teacher, student), data)
    assert len(student.seen) == len(teacher.seen) == steps  # one call each per training step
    mixed = 0
    for i, (t_in, s_in) in enumerate(zip(teacher.seen, student.seen)):
        assert torch.equal(t_in, s_in), f"step {i}: the teacher labelled another input than the student's"
        mixed += not torch.equal(s_in, raw[i % len(raw)])
    p = cfg.distill.batch_transform.p  # the share of batches mixed; the others pass as they are
    assert mixed == steps if p == 1.0 else 0 < mixed < steps


def test_the_kl_term_gets_the_teachers_logits_of_the_mixed_input(compose_train, fit_trainer):
    """Inside each training step the objective receives the teacher's logits of the student's mixed input."""
    cfg = compose_train("distill.batch_transform.p=1.0")
    teacher, student = Spy(0), Spy(1)
    module = recipe_module(cfg, teacher, student)
    inputs = []
    forward = module.loss.forward
    module.loss.forward = lambda i: inputs.append(i) or forward(i)
    fit_trainer(max_steps=2).fit(module, loader())
    assert len(inputs) == len(teacher.seen) == len(student.seen) == 2
    for x_t, x_s, i in zip(teacher.seen, student.seen, inputs):
        assert torch.equal(x_t, x_s)
        with torch.no_grad():
            assert torch.allclose(i.teacher_logits, teacher.net(x_s))


# -------------------------------------------------------------------------------------- patience
@pytest.mark.parametrize("overrides", RECIPES)
def test_the_schedule_reaches_its_final_lr_at_the_end_of_each_stage(compose_train, fit_trainer, overrides):
    cfg = compose_train(overrides)
    lr = cfg.optim.optimizer.lr
    final = lr * cfg.optim.scheduler.final_lr_ratio
    # The student stage, and a labels-only stage (teacher / baseline) of another length.
    stages = [(recipe_module(cfg, Spy(0), Spy(1)), 3),
              (build_module_factory(cfg.module)(student=Spy(2), teacher=None, loss=CE()), 5)]
    for module, epochs in stages:
        trace = LrTrace()
        fit_trainer(callbacks=[trace], max_epochs=epochs).fit(module, loader())
        assert len(trace.lrs) == epochs * N // B
        assert trace.lrs[-1] == pytest.approx(final, abs=1e-12)  # the last step lands on the final lr
        assert trace.lrs[-2] > final  # ... and not before: the schedule spans the whole fit
        assert max(trace.lrs) <= lr + 1e-12
        assert all(a >= b for a, b in zip(trace.lrs[len(trace.lrs) // 2:], trace.lrs[len(trace.lrs) // 2 + 1:]))
