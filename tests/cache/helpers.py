"""Teachers, data and data modules shared by the teacher-cache tests."""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import Dataset

from kd_lightning.data.arrays import ArrayDataModule

N, D, C = 96, 12, 10


def make_teacher(seed: int = 0, scale: float = 3.0) -> nn.Module:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(D, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, C))
    with torch.no_grad():
        net[-1].weight.mul_(scale)
    net.train()  # the cache must switch it to eval mode itself
    return net


def make_data(n: int = N, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, D, generator=g)
    y = torch.randint(0, C, (n,), generator=g)
    return x, y


def exact_logits(teacher: nn.Module, x: torch.Tensor) -> torch.Tensor:
    was = teacher.training
    teacher.eval()
    with torch.no_grad():
        out = teacher(x)
    teacher.train(was)
    return out


class Arrays(ArrayDataModule):
    def __init__(self, n: int = N, **kw):
        kw.setdefault("batch_size", 16)
        super().__init__(val_fraction=0.25, **kw)
        self.n = n

    def load_arrays(self):
        x, y = make_data(self.n)
        xt, yt = make_data(40, seed=2)
        y[:C] = torch.arange(C)
        return x.numpy(), y.numpy(), xt.numpy(), yt.numpy()


# ---------------------------------------------------------------------------------- random transforms
class ImageLike(Dataset):
    def __init__(self, transform):
        self.transform = transform
        self.x = torch.rand(12, 3, 8, 8)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.transform(self.x[i]), i % C
