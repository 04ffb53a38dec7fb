"""The MNIST-1D paper's models (Greydanus 2020) and width-scaled CNNs for teacher/student pairs."""
from __future__ import annotations

from torch import Tensor, nn


def _as_sequence(x: Tensor) -> Tensor:
    # Data comes as [B, 40]; convolutions want one channel.
    return x.unsqueeze(1) if x.ndim == 2 else x


class ResidualMLP(nn.Module):
    """``h = relu(l1 x); h = h + relu(l2 h); l3 h`` — 40→100→100→10 has 15,210 parameters."""

    def __init__(self, input_size: int = 40, hidden: int = 100, num_classes: int = 10):
        super().__init__()
        self.l1 = nn.Linear(input_size, hidden)
        self.l2 = nn.Linear(hidden, hidden)
        self.l3 = nn.Linear(hidden, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = x.flatten(1)
        h = self.l1(x).relu()
        h = h + self.l2(h).relu()
        return self.l3(h)


class CNN1D(nn.Module):
    """Three stride-2 1-D convolutions with ReLU and a linear head.

    With ``channels=25`` this is the paper's CNN (Conv1d(1,25,k5,s2,p1), two Conv1d(25,25,k3,s2,p1),
    flatten 125 → 10; 5,210 parameters). ``channels`` scales the width for teachers and students.
    """

    def __init__(self, channels: int = 25, num_classes: int = 10, input_length: int = 40):
        super().__init__()
        self.blocks = nn.Sequential(
            nn.Sequential(nn.Conv1d(1, channels, 5, stride=2, padding=1), nn.ReLU()),
            nn.Sequential(nn.Conv1d(channels, channels, 3, stride=2, padding=1), nn.ReLU()),
            nn.Sequential(nn.Conv1d(channels, channels, 3, stride=2, padding=1), nn.ReLU()),
        )
        length = input_length
        for k in (5, 3, 3):
            length = (length + 2 - k) // 2 + 1
        self.fc = nn.Linear(channels * length, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.blocks(_as_sequence(x)).flatten(1))
