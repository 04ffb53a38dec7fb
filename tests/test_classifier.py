"""kd_lightning/classifier.py: ClassifierModule trains a plain classifier (the teacher and baseline stages)."""
from __future__ import annotations

import warnings

import pytest
import torch

from helpers import MLP, NUM_CLASSES, Probe, hparams_are_plain, loader, sgd
from kd_lightning import ClassifierModule
from kd_lightning.losses import CE


pytestmark = pytest.mark.usefixtures("seeded")


def test_classifier_hparams_and_no_module_warning(tmp_path, make_trainer, data):
    x, y = data
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = ClassifierModule(MLP(hidden=16), optimizer=sgd(), label_smoothing=0.1)
    nn_warnings = [str(w.message) for w in caught if "instance of `nn.Module`" in str(w.message)]
    assert not nn_warnings, nn_warnings
    assert module.hparams.label_smoothing == 0.1
    trainer = make_trainer(max_steps=2)
    trainer.fit(module, loader(x, y))
    path = tmp_path / "clf.ckpt"
    trainer.save_checkpoint(str(path))
    hp = torch.load(str(path), map_location="cpu", weights_only=False)["hyper_parameters"]
    assert hparams_are_plain(hp), hp
    assert "model" not in hp and hp["label_smoothing"] == 0.1


def test_classifier_module_trains(make_trainer, data):
    x, y = data
    model = MLP(hidden=16)
    module = ClassifierModule(model, optimizer=sgd(0.3))
    assert module.model is model and module.teacher is None and isinstance(module.loss, CE)
    probe = Probe()
    trainer = make_trainer(callbacks=[probe], max_epochs=5, max_steps=-1)
    trainer.fit(module, loader(x, y, shuffle=True), loader(x, y))
    assert probe.losses[-1] < probe.losses[0]
    assert float(trainer.callback_metrics["val/acc"]) > 1.0 / NUM_CLASSES
