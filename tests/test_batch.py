"""kd_lightning/batch.py: tuple and dict batches (configured and default keys, indices) reach the objective intact,
and malformed batches are clear errors."""
from __future__ import annotations

import math
from typing import Dict, List

import pytest
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, TensorDataset

from helpers import MLP, N, DictDataset, loader, sgd, warmed_teacher
from kd_lightning import DistillationModule
from kd_lightning.losses import KD, DistillInputs


pytestmark = pytest.mark.usefixtures("seeded")


class RecordingKD(KD):
    """KD that remembers the indices and targets it was given."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.seen_index: List[Tensor] = []
        self.seen_target: List[Tensor] = []

    def forward(self, inputs: DistillInputs) -> Dict[str, Tensor]:
        if inputs.index is not None:
            self.seen_index.append(inputs.index.clone())
        if inputs.target is not None:
            self.seen_target.append(inputs.target.clone())
        return super().forward(inputs)


class IndexedDataset(Dataset):
    def __init__(self, x: Tensor, y: Tensor):
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.x[i], self.y[i], i


# ===================================================================================== 4. batches
def _fit_recording(make_trainer, train_loader, val_loader=None, **module_kw):
    loss = RecordingKD()
    module = DistillationModule(MLP(hidden=16), warmed_teacher(), loss=loss, optimizer=sgd(), **module_kw)
    trainer = make_trainer(max_epochs=1, max_steps=-1)
    trainer.fit(module, train_loader, val_loader)
    assert math.isfinite(float(trainer.callback_metrics["train/loss"]))
    return module, loss, trainer


def test_tuple_batch(make_trainer, data):
    x, y = data
    _, loss, trainer = _fit_recording(make_trainer, loader(x, y), loader(x, y))
    assert torch.equal(torch.cat(loss.seen_target[:4]), y)
    assert not loss.seen_index
    assert "val/acc" in trainer.callback_metrics


def test_tuple_batch_with_index(make_trainer, data):
    x, y = data
    _, loss, _ = _fit_recording(make_trainer, DataLoader(IndexedDataset(x, y), batch_size=16, shuffle=True))
    assert len(loss.seen_index) == 4
    idx = torch.cat(loss.seen_index)
    assert sorted(idx.tolist()) == list(range(N))
    assert torch.equal(torch.cat(loss.seen_target), y[idx])  # index and target travel together


def test_dict_batch_with_configured_keys(make_trainer, data):
    x, y = data
    # the default names carry garbage: the configured keys must win
    ds = DictDataset({"image": x, "label": y, "input": torch.zeros(N, 3), "target": torch.full((N,), 99),
                      "idx": torch.arange(N)})
    dl = DataLoader(ds, batch_size=16)
    _, loss, trainer = _fit_recording(make_trainer, dl, dl, input_key="image", target_key="label", index_key="idx")
    assert torch.equal(torch.cat(loss.seen_target[:4]), y)
    assert torch.equal(torch.cat(loss.seen_index[:4]), torch.arange(N))
    assert "val/acc" in trainer.callback_metrics


@pytest.mark.parametrize("keys", [("input", "target"), ("image", "label"), ("x", "y"), ("pixel_values", "labels")])
def test_dict_batch_default_keys(make_trainer, data, keys):
    x, y = data
    dl = DataLoader(DictDataset({keys[0]: x, keys[1]: y, "index": torch.arange(N)}), batch_size=16)
    _, loss, _ = _fit_recording(make_trainer, dl)
    assert torch.equal(torch.cat(loss.seen_target), y)
    assert torch.equal(torch.cat(loss.seen_index), torch.arange(N))


def test_dict_batch_missing_keys(make_trainer, data):
    x, y = data
    dl = DataLoader(DictDataset({"features": x, "cls": y}), batch_size=16)
    module = DistillationModule(MLP(hidden=16), warmed_teacher(), optimizer=sgd())
    with pytest.raises(KeyError, match=r"input.*features.*input_key|input_key"):
        make_trainer().fit(module, dl)

    module = DistillationModule(MLP(hidden=16), warmed_teacher(), optimizer=sgd(), input_key="image")
    with pytest.raises(KeyError, match=r"'image'.*\['cls', 'features'\]"):
        make_trainer().fit(module, dl)

    module = DistillationModule(MLP(hidden=16), warmed_teacher(), optimizer=sgd(), input_key="features",
                                target_key="label")
    with pytest.raises(KeyError, match=r"'label'"):
        make_trainer().fit(module, dl)


def test_tuple_batch_of_wrong_length(make_trainer, data):
    x, y = data
    dl = DataLoader(TensorDataset(x, y, y, y), batch_size=16)
    module = DistillationModule(MLP(hidden=16), warmed_teacher(), optimizer=sgd())
    with pytest.raises(ValueError, match="dict batch"):
        make_trainer().fit(module, dl)
