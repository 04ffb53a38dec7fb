"""The contract every distillation loss follows.

A loss is an ``nn.Module`` that receives one :class:`DistillInputs` per step and returns a
dict of named scalar terms whose ``"loss"`` entry is the weighted total that gets back-propagated.
It declares the features it needs through ``student_taps`` / ``teacher_taps`` (module paths, see
:mod:`kd_lightning.taps`) and owns any trainable adapters, so the module's optimizer picks them up.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn


@dataclass
class DistillInputs:
    """Everything a loss may look at for one batch."""

    student_logits: Tensor
    teacher_logits: Optional[Tensor] = None
    target: Optional[Tensor] = None
    student_features: Dict[str, Tensor] = field(default_factory=dict)
    teacher_features: Dict[str, Tensor] = field(default_factory=dict)
    # Position in training, for warm-ups and schedules (float epochs allowed).
    epoch: float = 0.0
    # Dataset indices of the samples (CRD's memory bank, teacher caches); None when unknown.
    index: Optional[Tensor] = None
    # Per-sample mask of which samples carry a usable label (transfer sets have none).
    labeled: Optional[Tensor] = None


def check_temperature(temperature: float) -> float:
    if not isinstance(temperature, (int, float)) or not math.isfinite(temperature) or temperature <= 0:
        raise ValueError(
            f"temperature must be a positive finite number, got {temperature!r}; "
            "use e.g. temperature=4.0 (CIFAR convention) or 1.0 (ImageNet)"
        )
    return float(temperature)


def check_weights(**weights: float) -> Dict[str, float]:
    """Weights must be finite and non-negative, and not all zero."""
    out = {}
    for name, value in weights.items():
        if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        out[name] = float(value)
    if out and all(v == 0 for v in out.values()):
        names = ", ".join(out)
        raise ValueError(f"all loss weights are zero ({names}): nothing would be trained; set at least one > 0")
    return out


class Loss(nn.Module):
    """Base class: subclasses implement :meth:`forward` returning ``{"loss": total, term: value, ...}``.

    ``needs_teacher`` is False for labels-only losses (the module then runs no teacher);
    ``needs_target`` says whether hard labels are used (transfer sets skip the CE part).
    Terms other than ``"loss"`` are logged unweighted under ``train/<name>``.
    """

    needs_teacher: bool = True
    needs_target: bool = True
    # True when the loss reads ``inputs.index`` (a memory bank): the data must yield sample indices.
    needs_index: bool = False

    @property
    def student_taps(self) -> List[str]:
        """Student module paths whose outputs this loss reads from ``student_features``."""
        return []

    @property
    def teacher_taps(self) -> List[str]:
        """Teacher module paths whose outputs this loss reads from ``teacher_features``."""
        return []

    @property
    def needs_build(self) -> bool:
        """True while trainable adapters still wait for the feature shapes (see :meth:`build`)."""
        return False

    def build(self, inputs: DistillInputs) -> None:
        """Create shape-dependent parameters (regressors, embeddings) from one example batch.

        :class:`~kd_lightning.DistillationModule` calls this in ``setup()`` with a dry run, before the
        optimizer is made, so the new parameters are trained with the student.
        """

    def forward(self, inputs: DistillInputs) -> Dict[str, Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError


class Compose(Loss):
    """Sum of several losses; each keeps its own weights and its term names.

    ``Compose([KD(...), AT(...)])`` logs ``ce``, ``kd``, ``at`` and back-propagates their weighted sum.
    Two losses producing the same term name is an error, because the log would be ambiguous.
    """

    def __init__(self, losses: Sequence[Loss]):
        super().__init__()
        if not losses:
            raise ValueError("Compose needs at least one loss")
        self.losses = nn.ModuleList(losses)

    @property
    def needs_teacher(self) -> bool:  # type: ignore[override]
        return any(o.needs_teacher for o in self.losses)

    @property
    def needs_index(self) -> bool:  # type: ignore[override]
        return any(getattr(o, "needs_index", False) for o in self.losses)

    @property
    def student_taps(self) -> List[str]:
        return _unique(p for o in self.losses for p in o.student_taps)

    @property
    def teacher_taps(self) -> List[str]:
        return _unique(p for o in self.losses for p in o.teacher_taps)

    @property
    def needs_build(self) -> bool:  # type: ignore[override]
        return any(o.needs_build for o in self.losses)

    def build(self, inputs: DistillInputs) -> None:
        for o in self.losses:
            if o.needs_build:
                o.build(inputs)

    @property
    def temperature(self) -> Optional[float]:
        for o in self.losses:
            if getattr(o, "temperature", None) is not None:
                return o.temperature
        return None

    def forward(self, inputs: DistillInputs) -> Dict[str, Tensor]:
        total: Optional[Tensor] = None
        terms: Dict[str, Tensor] = {}
        for o in self.losses:
            out = o(inputs)
            total = out["loss"] if total is None else total + out["loss"]
            for name, value in out.items():
                if name == "loss":
                    continue
                if name in terms:
                    raise ValueError(f"two losses both report a term named {name!r}; give one of them another name")
                terms[name] = value
        terms["loss"] = total  # type: ignore[assignment]
        return terms


def resolve_pairs(pairs: Optional[Sequence[Sequence[str]]] = None,
                  student_layers: Optional[Sequence[str] | str] = None,
                  teacher_layers: Optional[Sequence[str] | str] = None) -> List[Tuple[str, str]]:
    """Normalize layer pairs given as ``pairs=[(s, t), ...]`` or as two parallel lists (Hydra-friendly)."""
    if pairs is None:
        if student_layers is None or teacher_layers is None:
            raise ValueError("give pairs=[(student_path, teacher_path), ...] or both student_layers and teacher_layers")
        s = [student_layers] if isinstance(student_layers, str) else list(student_layers)
        t = [teacher_layers] if isinstance(teacher_layers, str) else list(teacher_layers)
        if len(s) != len(t):
            raise ValueError(f"student_layers ({len(s)}) and teacher_layers ({len(t)}) must pair up one to one")
        pairs = list(zip(s, t))
    out = []
    for pair in pairs:
        if len(pair) != 2 or not all(isinstance(p, str) for p in pair):
            raise ValueError(f"each pair must be (student_path, teacher_path), got {pair!r}")
        out.append((pair[0], pair[1]))
    if not out:
        raise ValueError("at least one (student_path, teacher_path) pair is needed")
    return out


def _unique(items: Iterable[str]) -> List[str]:
    seen: Dict[str, None] = {}
    for i in items:
        seen.setdefault(i, None)
    return list(seen)
