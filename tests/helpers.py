"""Tiny models, data and state checks shared by the tests of the distillation core (module, teacher,
batch, classifier, augment, data.transfer, mutual).

Tiny MLPs (the teacher has BatchNorm1d and Dropout, so any train-mode leak shows up as moved running
statistics or stochastic outputs) on small random tensors; every fit is a few CPU steps.
"""
from __future__ import annotations

import functools
import hashlib
from typing import Dict, List

import lightning as L
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from kd_lightning.data.indexed import IndexedDataset

IN_FEATURES, NUM_CLASSES, N = 16, 10, 64


# ----------------------------------------------------------------------------- models (module level:
# ddp_spawn pickles them into the worker processes)
class MLP(nn.Module):
    def __init__(self, in_features: int = IN_FEATURES, num_classes: int = NUM_CLASSES, hidden: int = 32,
                 dropout: float = 0.5):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(in_features, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
                                  nn.Dropout(dropout))
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))


class Wrapped(nn.Module):
    """A model whose own state_dict keys start with ``net.`` (a very common layout)."""

    def __init__(self, num_classes: int = NUM_CLASSES):
        super().__init__()
        self.net = MLP(num_classes=num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


# ------------------------------------------------------------------------------------------ data
def make_data(n: int = N, num_classes: int = NUM_CLASSES, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, IN_FEATURES, generator=g)
    w = torch.randn(IN_FEATURES, num_classes, generator=g)
    y = (x @ w).argmax(-1)
    y[:num_classes] = torch.arange(num_classes)  # every class (incl. the largest label) is present
    return x, y


class DictDataset(Dataset):
    def __init__(self, items: Dict[str, Tensor]):
        self.items = items
        self.n = len(next(iter(items.values())))

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> Dict[str, Tensor]:
        return {k: v[i] for k, v in self.items.items()}


def loader(x: Tensor, y: Tensor, batch_size: int = 16, shuffle: bool = False) -> DataLoader:
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=shuffle)


def sgd(lr: float = 0.1):
    return functools.partial(torch.optim.SGD, lr=lr, momentum=0.9)


def state_hash(module: nn.Module) -> str:
    h = hashlib.sha256()
    for key, value in sorted(module.state_dict().items()):
        h.update(key.encode())
        h.update(value.detach().cpu().to(torch.float64).contiguous().numpy().tobytes())
    return h.hexdigest()


def snapshot(module: nn.Module) -> Dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def params(module: nn.Module) -> Dict[str, Tensor]:
    """Trainable parameters only (a forward in train mode legitimately moves BatchNorm buffers)."""
    return {k: v.detach().clone() for k, v in module.named_parameters()}


def same_state(a: Dict[str, Tensor], b: Dict[str, Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def warmed_teacher(seed: int = 1, num_classes: int = NUM_CLASSES) -> MLP:
    """A teacher whose BatchNorm statistics are not the initial 0/1 (so a reset or an update shows)."""
    torch.manual_seed(seed)
    t = MLP(num_classes=num_classes, hidden=48)
    x, _ = make_data(seed=seed + 100)
    t.train()
    with torch.no_grad():
        t(x * 3 + 1)
    return t.eval()


class Probe(L.Callback):
    """Records teacher/student modes during training, optimizer steps and loss dtypes."""

    def __init__(self):
        self.teacher_any_training: List[bool] = []
        self.student_training: List[bool] = []
        self.optimizer_steps = 0
        self.loss_dtypes: List[torch.dtype] = []
        self.losses: List[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if pl_module.teacher is not None:
            # the wrapped network (the FrozenTeacher wrapper's own flag is checked separately)
            self.teacher_any_training.append(any(m.training for m in pl_module.teacher.net.modules()))
        self.student_training.append(pl_module.student.training)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.optimizer_steps += 1

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.loss_dtypes.append(loss.dtype)
        self.losses.append(float(loss))


def hparams_are_plain(value) -> bool:
    if isinstance(value, (nn.Module, Tensor, functools.partial)) or callable(value):
        return False
    if isinstance(value, dict):
        return all(hparams_are_plain(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return all(hparams_are_plain(v) for v in value)
    return True


def accuracy(logits: Tensor, y: Tensor) -> float:
    return float((logits.argmax(-1) == y).float().mean())


# ------------------------------------------------------------- smaller still: 8 features, 4 classes
D, C = 8, 4


def small_data(n: int = 32, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, D, generator=g), torch.randint(0, C, (n,), generator=g)


def small_nets(seed: int = 0):
    """(teacher, student): a two-layer MLP and a linear model on ``small_data``."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(D, 16), nn.ReLU(), nn.Linear(16, C)), nn.Linear(D, C)


class Spy(nn.Module):
    """A network that records every input it is called with."""

    def __init__(self, seed: int):
        super().__init__()
        torch.manual_seed(seed)
        self.net = nn.Linear(D, C)
        self.seen: List[Tensor] = []

    def forward(self, x: Tensor) -> Tensor:
        self.seen.append(x.detach().clone())
        return self.net(x)


# ------------------------------------------------- tiny CNNs on sklearn's 8x8 digits (feature objectives, mutual)
N_DIGITS_TRAIN, DIGITS_BATCH = 128, 32  # 4 steps per epoch


class TinyCNN(nn.Module):
    """Two conv stages and a linear head; ``stride`` of stage 2 sets its spatial size (8x8 input)."""

    def __init__(self, width: int, stride: int = 2, num_classes: int = 10):
        super().__init__()
        self.stage1 = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.stage2 = nn.Sequential(nn.Conv2d(width, 2 * width, 3, stride=stride, padding=1),
                                    nn.BatchNorm2d(2 * width), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x):
        return self.fc(self.pool(self.stage2(self.stage1(x))).flatten(1))


class DigitsImages(L.LightningDataModule):
    """sklearn's 8x8 digits as [1, 8, 8] images; ``indexed`` wraps the training set with IndexedDataset."""

    def __init__(self, indexed: bool = False):
        super().__init__()
        self.indexed = indexed
        from sklearn.datasets import load_digits

        digits = load_digits()
        x = torch.tensor(digits.images[: N_DIGITS_TRAIN + 64], dtype=torch.float32)[:, None] / 16.0
        y = torch.tensor(digits.target[: N_DIGITS_TRAIN + 64], dtype=torch.long)
        self.train_set = TensorDataset(x[:N_DIGITS_TRAIN], y[:N_DIGITS_TRAIN])
        self.val_set = TensorDataset(x[N_DIGITS_TRAIN:], y[N_DIGITS_TRAIN:])

    def train_dataloader(self):
        ds = IndexedDataset(self.train_set) if self.indexed else self.train_set
        return DataLoader(ds, batch_size=DIGITS_BATCH, shuffle=True)

    def val_dataloader(self):
        return DataLoader(self.val_set, batch_size=64)


QUICK_LATENCY = {"warmup": 1, "min_repeats": 2, "min_seconds": 0.0}


def compose_config(tmp_path, *overrides: str, name: str = "train", hydra: bool = False, out: str = "run"):
    """A config from conf/ whose outputs go under ``tmp_path`` (the ``compose`` fixture, and its plain form)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import open_dict

    from kd_lightning.app.confdir import CONFIG_DIR

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = hydra_compose(name, overrides=list(overrides), return_hydra_config=hydra)
    if "latency" in cfg and not any(o.lstrip("+~").startswith("latency") for o in overrides):
        # The report's latency is a smoke test here (a second per model otherwise: most of a tiny run).
        with open_dict(cfg):
            cfg.latency = {**QUICK_LATENCY}
    if "paths" in cfg:
        with open_dict(cfg):
            cfg.paths.output_dir = str(tmp_path / out)
            cfg.paths.cache_dir = str(tmp_path / "cache")
    return cfg


# ------------------------------------------------------------------ damage a file (fault-injection tests)
def truncate(path) -> None:
    """The file cut to half its bytes."""
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])


def empty(path) -> None:
    """The file left with no bytes."""
    path.write_bytes(b"")
