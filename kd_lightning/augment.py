"""Batch transforms for consistent teaching / function matching (Beyer et al. 2022).

A batch transform is a callable ``(x, y) -> (x, y, labeled)`` given to
``DistillationModule(batch_transform=...)``. It runs in training steps only, *before* the teacher and the
student see the batch, so the teacher labels exactly the mixed input the student is trained on
("consistent teaching"). ``labeled`` is a per-sample bool mask of the samples whose hard label ``y`` still
describes the input (None: all of them); the CE term skips the others, the KD term uses every sample.
A mixed sample has no single hard label, so mixed samples are returned as unlabeled: function matching
is KL-only (``KD(temperature=1, ce_weight=0, kd_weight=1)``, ``conf/distill/function_matching.yaml``).

Randomness comes from torch's global generator (seeded by ``lightning.seed_everything``) or the
``generator`` given (Beta draws always use the global one); the random numbers are drawn on the CPU, so
nothing here waits for the device.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
from torch import Tensor


def _check_p(p: float) -> float:
    if not 0.0 <= float(p) <= 1.0:
        raise ValueError(f"p (the probability of applying the transform) must be in [0, 1], got {p!r}")
    return float(p)


def _check_alpha(alpha: Optional[float]) -> Optional[float]:
    if alpha is not None and (not isinstance(alpha, (int, float)) or not math.isfinite(alpha) or alpha <= 0):
        raise ValueError(f"alpha must be a positive number (Beta(alpha, alpha)) or None (uniform), got {alpha!r}")
    return None if alpha is None else float(alpha)


class _BatchMix:
    def __init__(self, alpha: Optional[float], p: float, generator: Optional[torch.Generator]):
        self.alpha = _check_alpha(alpha)
        self.p = _check_p(p)
        self.generator = generator

    def _uniform(self, *shape: int) -> Tensor:
        return torch.rand(shape, generator=self.generator)

    def _lam(self, n: int = 1) -> Tensor:
        """``n`` mixing weights on the CPU: U[0, 1] (alpha None) or Beta(alpha, alpha)."""
        if self.alpha is None:
            return self._uniform(n)
        # torch's Beta sampler takes no generator: Beta draws always use the global one.
        return torch.distributions.Beta(self.alpha, self.alpha).sample((n,))

    def _skip(self) -> bool:
        return self.p < 1.0 and float(self._uniform(1)) >= self.p

    def _perm(self, n: int, device: torch.device) -> Tensor:
        return torch.randperm(n, generator=self.generator).to(device, non_blocking=True)

    @staticmethod
    def _unlabeled(x: Tensor) -> Tensor:
        return torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)

    def __repr__(self) -> str:
        alpha = "uniform" if self.alpha is None else f"alpha={self.alpha}"
        return f"{type(self).__name__}({alpha}, p={self.p})"


class Mixup(_BatchMix):
    """``x' = lam * x + (1 - lam) * x[perm]`` with ``perm`` a random pairing within the batch.

    ``alpha=None`` draws ``lam ~ U[0, 1]`` (Beyer et al. 2022's function matching; the same as
    ``alpha=1``), a float draws ``lam ~ Beta(alpha, alpha)`` (Zhang et al. 2018 use 0.2-0.4).
    ``per_sample=True`` draws one ``lam`` per sample instead of one per batch. Works on any input shape
    with the batch first. ``p`` is the probability of mixing a batch at all (unmixed batches keep labels).
    """

    def __init__(self, alpha: Optional[float] = None, p: float = 1.0, per_sample: bool = False,
                 generator: Optional[torch.Generator] = None):
        super().__init__(alpha, p, generator)
        self.per_sample = bool(per_sample)

    def __call__(self, x: Tensor, y: Optional[Tensor]) -> Tuple[Tensor, Optional[Tensor], Optional[Tensor]]:
        if self._skip():
            return x, y, None
        n = x.shape[0]
        perm = self._perm(n, x.device)
        if self.per_sample:
            lam = self._lam(n).to(device=x.device, dtype=x.dtype).view(-1, *([1] * (x.ndim - 1)))
        else:
            lam = float(self._lam(1))
        return lam * x + (1.0 - lam) * x[perm], y, self._unlabeled(x)


class CutMix(_BatchMix):
    """Pastes a random box of a paired sample into each sample (Yun et al. 2019).

    For images ``[B, C, H, W]`` the box is 2-D; for sequences ``[B, L]`` or ``[B, C, L]`` it is a
    segment of the last axis. The box covers a fraction ``1 - lam`` of the area, ``lam`` from
    ``Beta(alpha, alpha)`` (``alpha=1``, uniform, by default); one box per batch.
    """

    def __init__(self, alpha: Optional[float] = 1.0, p: float = 1.0, generator: Optional[torch.Generator] = None):
        super().__init__(alpha, p, generator)

    def _span(self, size: int, frac: float) -> Tuple[int, int]:
        length = int(round(size * frac))
        center = int(self._uniform(1) * size)
        lo = max(0, min(size, center - length // 2))
        hi = max(0, min(size, lo + length))
        return lo, hi

    def __call__(self, x: Tensor, y: Optional[Tensor]) -> Tuple[Tensor, Optional[Tensor], Optional[Tensor]]:
        if x.ndim < 2:
            raise ValueError(f"CutMix needs inputs [batch, ...] with at least one data axis, got shape {tuple(x.shape)}")
        if self._skip():
            return x, y, None
        perm = self._perm(x.shape[0], x.device)
        lam = float(self._lam(1))
        out = x.clone()
        if x.ndim == 4:
            side = math.sqrt(1.0 - lam)
            h0, h1 = self._span(x.shape[-2], side)
            w0, w1 = self._span(x.shape[-1], side)
            out[..., h0:h1, w0:w1] = x[perm][..., h0:h1, w0:w1]
        else:
            l0, l1 = self._span(x.shape[-1], 1.0 - lam)
            out[..., l0:l1] = x[perm][..., l0:l1]
        return out, y, self._unlabeled(x)
