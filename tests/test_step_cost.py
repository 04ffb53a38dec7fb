"""kd_lightning/step_cost.py: the StepCost callback's timing, peak-memory window and loss-parameter count."""
import functools
import json

import pytest
import torch

from helpers import DigitsImages, TinyCNN
from kd_lightning import DistillationModule
from kd_lightning.losses import KD, Compose, FitNet
from kd_lightning.step_cost import FILENAME, StepCost, peak_since, start_peak_window


def test_peak_window_sees_an_allocation_made_inside_it():
    cpu = torch.device("cpu")
    base = start_peak_window(cpu)
    if base is None:
        pytest.fail("no /proc/self/status: StepCost cannot measure CPU memory on this system")
    block = torch.ones(32 * 2**20 // 4 * 4)  # 128 MiB, every page touched
    assert block.sum() > 0
    del block
    assert peak_since(cpu, base) >= 100.0
    assert peak_since(cpu, start_peak_window(cpu)) < 100.0  # a new window forgets the old peak


def test_step_cost_times_steps_and_counts_the_loss_parameters(make_trainer, tmp_path):
    torch.manual_seed(0)
    loss = Compose([KD(), FitNet(student_layers="stage2", teacher_layers="stage2")])
    module = DistillationModule(student=TinyCNN(4, stride=2), teacher=TinyCNN(8, stride=1), loss=loss,
                                optimizer=functools.partial(torch.optim.SGD, lr=0.05))
    cost = StepCost(warmup=2)
    make_trainer(max_steps=8, limit_val_batches=0, callbacks=[cost], default_root_dir=str(tmp_path)).fit(
        module, datamodule=DigitsImages())
    written = json.loads((tmp_path / FILENAME).read_text())
    assert written["steps_timed"] == 6 and written["step_s"] > 0 and written["device"] == "cpu"
    assert written["loss_params"] == sum(p.numel() for p in loss.parameters()) > 0
    assert written["peak_mib"] is not None and written["peak_mib"] >= 0
    with pytest.raises(ValueError, match="warmup"):
        StepCost(warmup=-1)
