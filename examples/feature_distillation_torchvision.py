"""Feature distillation on unmodified torchvision models.

Neither network is changed or wrapped: the losses name the layers they compare by module path
("layer2", "layer3") and kd-lightning reads those activations with forward hooks.

- teacher: ``torchvision.models.resnet18(weights=None, num_classes=10)``, briefly trained on labels;
- student: torchvision's ``ResNet`` class with one BasicBlock per stage (a ResNet-10, 4.9M parameters);
- loss: KD + attention transfer on layer2 and layer3 + a FitNet hint on layer2 (its 3x3 regressor is
  built from the observed feature shapes and trained with the student).

Data: scikit-learn's bundled 8x8 digits, upsampled to 32x32 and repeated over 3 channels, so nothing is
downloaded. The script stays tiny on purpose (a few batches per epoch): it shows the wiring, not a
benchmark. It prints a summary and one JSON line.

    python examples/feature_distillation_torchvision.py          # under a minute on a laptop CPU
    python examples/feature_distillation_torchvision.py --fast   # a few batches (what the tests run)
"""
from __future__ import annotations

import argparse
import functools
import json
import math
import os
import warnings

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch.utils.data import DataLoader, TensorDataset
from torchvision.models import resnet18
from torchvision.models.resnet import BasicBlock, ResNet

from kd_lightning import ClassifierModule, DistillationModule
from kd_lightning.losses import AT, KD, Compose, FitNet


class UpsampledDigits(L.LightningDataModule):
    """Digits as 3x32x32 images; a fixed split; ``limit`` caps the training set for quick runs."""

    def __init__(self, batch_size: int = 32, image_size: int = 32, limit: int | None = None, seed: int = 0):
        super().__init__()
        self.batch_size, self.image_size, self.limit, self.seed = batch_size, image_size, limit, seed

    def setup(self, stage: str | None = None) -> None:
        x, y = load_digits(return_X_y=True)
        x = torch.tensor(x / 16.0, dtype=torch.float32).view(-1, 1, 8, 8)
        x = F.interpolate(x, size=self.image_size, mode="bilinear", align_corners=False).repeat(1, 3, 1, 1)
        x = (x - 0.5) / 0.5
        y = torch.tensor(y, dtype=torch.long)
        perm = torch.from_numpy(np.random.default_rng(self.seed).permutation(len(y)))
        test, train = perm[:300], perm[300:]
        if self.limit:
            train = train[: self.limit]
        self.train_set = TensorDataset(x[train], y[train])
        self.test_set = TensorDataset(x[test], y[test])

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.test_set, batch_size=100)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.test_set, batch_size=100)


def trainer(epochs: int, max_batches: int | None) -> L.Trainer:
    return L.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                     limit_train_batches=max_batches, limit_val_batches=1, default_root_dir=None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", default=os.environ.get("KD_EXAMPLES_FAST") == "1",
                        help="a few batches only (also: KD_EXAMPLES_FAST=1)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
    # fast: 2 teacher epochs and 1 student epoch of 4 batches; full: 384 training images, 3 + 2 epochs.
    epochs, max_batches, limit = (1, 4, 128) if args.fast else (2, None, 384)

    L.seed_everything(args.seed, verbose=False)
    dm = UpsampledDigits(batch_size=32, limit=limit, seed=args.seed)

    # The teacher: an unmodified torchvision ResNet-18 with 10 classes and no pretrained weights.
    teacher = resnet18(weights=None, num_classes=10)
    teacher_module = ClassifierModule(teacher, optimizer=functools.partial(torch.optim.Adam, lr=1e-3))
    t = trainer(epochs + 1, max_batches)
    t.fit(teacher_module, datamodule=dm)
    teacher_acc = float(t.test(teacher_module, datamodule=dm, verbose=False)[0]["test/acc"])

    # The student: torchvision's own ResNet class with one block per stage.
    student = ResNet(BasicBlock, [1, 1, 1, 1], num_classes=10)
    teacher_bn_before = teacher.bn1.running_mean.clone()
    student_before = student.layer2[0].conv1.weight.detach().clone()

    loss = Compose([
        KD(temperature=4.0, ce_weight=0.1, kd_weight=0.9),
        AT(student_layers=["layer2", "layer3"], teacher_layers=["layer2", "layer3"], weight=1000.0),
        FitNet(student_layers="layer2", teacher_layers="layer2", weight=1.0),
    ])
    module = DistillationModule(student=student, teacher=teacher, loss=loss,
                                optimizer=functools.partial(torch.optim.Adam, lr=1e-3))
    t = trainer(epochs, max_batches)
    t.fit(module, datamodule=dm)
    metrics = {k: float(v) for k, v in t.callback_metrics.items()}
    student_acc = float(t.test(module, datamodule=dm, verbose=False)[0]["test/acc"])

    optimizer_params = {id(p) for g in t.optimizers[0].param_groups for p in g["params"]}
    adapter_params = [p for p in loss.parameters() if p.requires_grad]
    result = {
        "teacher_acc": round(teacher_acc, 4),
        "student_acc": round(student_acc, 4),
        "train_at": metrics.get("train/at"),
        "train_fitnet": metrics.get("train/fitnet"),
        "train_kd": metrics.get("train/kd"),
        "teacher_params": sum(p.numel() for p in teacher.parameters()),
        "student_params": sum(p.numel() for p in student.parameters()),
        "adapter_params": sum(p.numel() for p in adapter_params),
        "adapters_in_optimizer": bool(adapter_params) and all(id(p) in optimizer_params for p in adapter_params),
        "teacher_in_optimizer": any(id(p) in optimizer_params for p in teacher.parameters()),
        "teacher_requires_grad": any(p.requires_grad for p in teacher.parameters()),
        "teacher_bn_unchanged": bool(torch.equal(teacher_bn_before, teacher.bn1.running_mean)),
        "student_changed": not torch.equal(student_before, student.layer2[0].conv1.weight.detach()),
        "all_terms_finite": all(math.isfinite(metrics.get(k, float("nan")))
                                for k in ("train/at", "train/fitnet", "train/kd", "train/loss")),
    }
    print(f"teacher resnet18 ({result['teacher_params']:,} params): test acc {teacher_acc:.3f}")
    print(f"student resnet10 ({result['student_params']:,} params, KD + AT + FitNet): test acc {student_acc:.3f}")
    print(f"last logged terms: kd={result['train_kd']:.4f} at={result['train_at']:.5f} "
          f"fitnet={result['train_fitnet']:.4f}; FitNet regressor: {result['adapter_params']:,} params "
          f"(in optimizer: {result['adapters_in_optimizer']}); teacher in optimizer: {result['teacher_in_optimizer']}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
