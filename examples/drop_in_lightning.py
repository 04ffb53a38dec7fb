"""Drop-in distillation in an existing Lightning project.

You already have a LightningDataModule and a Trainer set-up; this script shows that distilling a
student from a trained teacher only swaps the LightningModule for ``DistillationModule``.

The data is scikit-learn's bundled 8x8 digits (offline, 1,797 images). The script

1. trains a teacher MLP with ``ClassifierModule`` (labels only),
2. trains the same small student MLP twice with the user's own Trainer: on labels alone, and
   distilled from the teacher with ``KD``,
3. checks the teacher guarantees (frozen, eval mode, out of the optimizer, out of the checkpoint),
4. reloads the distilled student from its checkpoint,

and prints a human-readable summary followed by one JSON line with the numbers.

    python examples/drop_in_lightning.py            # under a minute on a laptop CPU
    python examples/drop_in_lightning.py --fast     # a few seconds (what the tests run)
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import tempfile
import warnings

import lightning as L
import numpy as np
import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from kd_lightning import ClassifierModule, DistillationModule
from kd_lightning.losses import KD


# --------------------------------------------------------------------------- the user's own code
class DigitsDataModule(L.LightningDataModule):
    """A plain LightningDataModule, written the way any Lightning project would write it."""

    def __init__(self, batch_size: int = 64, seed: int = 0):
        super().__init__()
        self.batch_size = batch_size
        self.seed = seed

    def setup(self, stage: str | None = None) -> None:
        x, y = load_digits(return_X_y=True)
        x = torch.tensor(x / 16.0, dtype=torch.float32)
        y = torch.tensor(y, dtype=torch.long)
        perm = torch.from_numpy(np.random.default_rng(self.seed).permutation(len(y)))
        n_test, n_val = 360, 180
        test, val, train = perm[:n_test], perm[n_test:n_test + n_val], perm[n_test + n_val:]
        self.train_set = TensorDataset(x[train], y[train])
        self.val_set = TensorDataset(x[val], y[val])
        self.test_set = TensorDataset(x[test], y[test])

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=256)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.test_set, batch_size=256)


def mlp(hidden: int) -> nn.Module:
    return nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, 10))


def make_trainer(epochs: int, root: str) -> L.Trainer:
    """The user's Trainer; nothing in it is specific to distillation."""
    return L.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, default_root_dir=root, logger=False,
                     enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                     num_sanity_val_steps=0)


def test_acc(trainer: L.Trainer, module: L.LightningModule, dm: L.LightningDataModule) -> float:
    return float(trainer.test(module, datamodule=dm, verbose=False)[0]["test/acc"])


# ------------------------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", default=os.environ.get("KD_EXAMPLES_FAST") == "1",
                        help="a few epochs instead of 25 and 20 (also: KD_EXAMPLES_FAST=1)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
    teacher_epochs, student_epochs = (8, 6) if args.fast else (25, 20)

    L.seed_everything(args.seed, verbose=False)
    dm = DigitsDataModule(batch_size=64, seed=args.seed)
    root = tempfile.mkdtemp(prefix="kd_drop_in_")

    # 1. The teacher: any trained nn.Module. Here it is trained on labels with ClassifierModule.
    teacher = mlp(256)
    trainer = make_trainer(teacher_epochs, root)
    teacher_module = ClassifierModule(teacher, optimizer=functools.partial(torch.optim.Adam, lr=3e-3))
    trainer.fit(teacher_module, datamodule=dm)
    teacher_acc = test_acc(trainer, teacher_module, dm)

    # 2a. The student on labels alone, for comparison.
    L.seed_everything(args.seed + 1, verbose=False)
    baseline = ClassifierModule(mlp(16), optimizer=functools.partial(torch.optim.Adam, lr=3e-3))
    trainer = make_trainer(student_epochs, root)
    trainer.fit(baseline, datamodule=dm)
    baseline_acc = test_acc(trainer, baseline, dm)

    # 2b. The same student, distilled: the only change is the LightningModule.
    L.seed_everything(args.seed + 1, verbose=False)
    student = mlp(16)
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    module = DistillationModule(
        student=student,
        teacher=teacher,
        loss=KD(temperature=4.0, ce_weight=0.1, kd_weight=0.9),
        optimizer=functools.partial(torch.optim.Adam, lr=3e-3),
    )
    trainer = make_trainer(student_epochs, root)
    trainer.fit(module, datamodule=dm)
    student_acc = test_acc(trainer, module, dm)

    # 3. The teacher guarantees.
    optimizer_params = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}
    teacher_frozen = all(not p.requires_grad and p.grad is None for p in teacher.parameters())
    teacher_eval = not any(m.training for m in teacher.modules())
    teacher_unchanged = all(torch.equal(teacher_before[k], v) for k, v in teacher.state_dict().items())
    teacher_in_optimizer = any(id(p) in optimizer_params for p in teacher.parameters())

    # 4. Checkpoints hold the student only; pass the networks back in to load one.
    ckpt = os.path.join(root, "student.ckpt")
    trainer.save_checkpoint(ckpt)
    state = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    teacher_keys_in_ckpt = sum(k.startswith("teacher.") for k in state)
    restored = DistillationModule.load_from_checkpoint(ckpt, student=mlp(16), teacher=teacher,
                                                       loss=KD(temperature=4.0))
    x = next(iter(dm.test_dataloader()))[0]
    with torch.no_grad():
        reload_matches = torch.allclose(restored.student.eval()(x), student.eval()(x))

    result = {
        "teacher_acc": round(teacher_acc, 4),
        "baseline_acc": round(baseline_acc, 4),
        "student_acc": round(student_acc, 4),
        "teacher_params": sum(p.numel() for p in teacher.parameters()),
        "student_params": sum(p.numel() for p in student.parameters()),
        "teacher_frozen": teacher_frozen,
        "teacher_eval": teacher_eval,
        "teacher_unchanged": teacher_unchanged,
        "teacher_in_optimizer": teacher_in_optimizer,
        "teacher_keys_in_ckpt": teacher_keys_in_ckpt,
        "reload_matches": bool(reload_matches),
    }
    print(f"teacher  ({result['teacher_params']:,} params): test acc {teacher_acc:.3f}")
    print(f"baseline ({result['student_params']:,} params, labels only): test acc {baseline_acc:.3f}")
    print(f"student  ({result['student_params']:,} params, distilled): test acc {student_acc:.3f}")
    print(f"teacher frozen={teacher_frozen} eval={teacher_eval} unchanged={teacher_unchanged} "
          f"in optimizer={teacher_in_optimizer}; teacher keys in checkpoint: {teacher_keys_in_ckpt}; "
          f"reloaded student matches: {bool(reload_matches)}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
