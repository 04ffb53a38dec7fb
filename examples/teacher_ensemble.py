"""Distilling one student from an ensemble of teachers.

Two teachers of different shapes are trained on labels (scikit-learn's bundled 8x8 digits, offline);
then one small student is distilled from both at once with ``teacher=[net1, net2]``. The ensemble
averages the teachers' softened probabilities (``ensemble_mode="probs"``, the default) at the loss's
temperature; ``ensemble_mode="logits"`` and ``ensemble_weights`` are the alternatives.

During validation and test the module logs ``teacher_acc`` (the ensemble's accuracy) and
``agreement`` (how often the student's top-1 equals the ensemble's). The script prints a summary and one
JSON line.

    python examples/teacher_ensemble.py            # under a minute on a laptop CPU
    python examples/teacher_ensemble.py --fast     # a few seconds (what the tests run)
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import warnings

import lightning as L
import torch
from torch import nn

from kd_lightning import ClassifierModule, DistillationModule
from kd_lightning.data import DigitsDataModule
from kd_lightning.losses import KD


def mlp(*widths: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in zip((64,) + widths, widths):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(widths[-1], 10))


def trainer(epochs: int) -> L.Trainer:
    return L.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", default=os.environ.get("KD_EXAMPLES_FAST") == "1",
                        help="a few epochs only (also: KD_EXAMPLES_FAST=1)")
    parser.add_argument("--mode", choices=["probs", "logits"], default="probs", help="how the teachers are averaged")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
    teacher_epochs, student_epochs = (6, 6) if args.fast else (25, 20)

    L.seed_everything(args.seed, verbose=False)
    dm = DigitsDataModule(batch_size=64, val_fraction=0.1, test_fraction=0.2, seed=args.seed)

    # Two independently trained teachers with different architectures.
    teachers = [mlp(256, 256), mlp(512)]
    teacher_accs = []
    for net in teachers:
        module = ClassifierModule(net, optimizer=functools.partial(torch.optim.Adam, lr=3e-3))
        t = trainer(teacher_epochs)
        t.fit(module, datamodule=dm)
        teacher_accs.append(float(t.test(module, datamodule=dm, verbose=False)[0]["test/acc"]))

    # One student, distilled from both teachers at once.
    L.seed_everything(args.seed + 1, verbose=False)
    student = mlp(24)
    module = DistillationModule(
        student=student,
        teacher=teachers,                     # a list: the teachers become one frozen ensemble
        ensemble_mode=args.mode,
        ensemble_weights=[0.5, 0.5],
        loss=KD(temperature=4.0, ce_weight=0.1, kd_weight=0.9),
        optimizer=functools.partial(torch.optim.Adam, lr=3e-3),
    )
    t = trainer(student_epochs)
    t.fit(module, datamodule=dm)
    train_kd = float(t.callback_metrics["train/kd"])
    test = t.test(module, datamodule=dm, verbose=False)[0]

    optimizer_params = {id(p) for g in t.optimizers[0].param_groups for p in g["params"]}
    result = {
        "mode": args.mode,
        "teacher_accs": [round(a, 4) for a in teacher_accs],
        "ensemble_acc": round(float(test["test/teacher_acc"]), 4),
        "student_acc": round(float(test["test/acc"]), 4),
        "agreement": round(float(test["test/agreement"]), 4),
        "train_kd": train_kd,
        "num_teachers": len(teachers),
        "teacher_params": [sum(p.numel() for p in net.parameters()) for net in teachers],
        "student_params": sum(p.numel() for p in student.parameters()),
        "teachers_frozen": all(not p.requires_grad for net in teachers for p in net.parameters()),
        "teachers_eval": not any(m.training for net in teachers for m in net.modules()),
        "teachers_in_optimizer": any(id(p) in optimizer_params for net in teachers for p in net.parameters()),
    }
    for i, (acc, n) in enumerate(zip(teacher_accs, result["teacher_params"])):
        print(f"teacher {i} ({n:,} params): test acc {acc:.3f}")
    print(f"ensemble of {len(teachers)} ({args.mode}): test acc {result['ensemble_acc']:.3f}")
    print(f"student ({result['student_params']:,} params): test acc {result['student_acc']:.3f}, "
          f"top-1 agreement with the ensemble {result['agreement']:.3f}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
