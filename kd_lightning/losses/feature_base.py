"""Shared plumbing of the feature- and relation-based losses.

:class:`FeatureLoss` holds the ``(student_path, teacher_path)`` pairs, declares them as taps and
fetches the captured tensors. :class:`AdapterLoss` adds trainable adapters that depend on the
feature shapes: they are created by :meth:`~AdapterLoss.build` from the dry run that
:class:`~kd_lightning.DistillationModule` performs before the optimizer exists, and the observed shapes
are stored in the module's extra state, so ``load_state_dict`` (checkpoints, ``load_from_checkpoint``)
re-creates the adapters of an un-built loss before their weights are loaded.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from .base import DistillInputs, Loss, resolve_pairs
from .checks import check_weights

Shape = Tuple[int, ...]

_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_BN = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}


class FeatureLoss(Loss):
    """A loss over tapped feature pairs with one non-negative ``weight``."""

    needs_target = False  # features only; compose with KD or CE for a label term

    def __init__(self, pairs: Optional[Sequence[Sequence[str]]] = None,
                 student_layers: Optional[Sequence[str] | str] = None,
                 teacher_layers: Optional[Sequence[str] | str] = None, weight: float = 1.0):
        super().__init__()
        self.pairs: List[Tuple[str, str]] = resolve_pairs(pairs, student_layers, teacher_layers)
        self.weight = check_weights(weight=weight)["weight"]

    @property
    def student_taps(self) -> List[str]:
        return list(dict.fromkeys(s for s, _ in self.pairs))

    @property
    def teacher_taps(self) -> List[str]:
        return list(dict.fromkeys(t for _, t in self.pairs))

    def features(self, inputs: DistillInputs) -> List[Tuple[Tensor, Tensor]]:
        """The captured ``(student, teacher)`` tensors of every pair, in order."""
        out = []
        for s, t in self.pairs:
            if s not in inputs.student_features:
                raise KeyError(f"{type(self).__name__}: no student feature {s!r} was captured "
                               f"(captured: {sorted(inputs.student_features)}); is the loss's student_taps tapped?")
            if t not in inputs.teacher_features:
                raise KeyError(f"{type(self).__name__}: no teacher feature {t!r} was captured "
                               f"(captured: {sorted(inputs.teacher_features)}); is the loss's teacher_taps tapped?")
            out.append((inputs.student_features[s], inputs.teacher_features[t]))
        return out

    def extra_repr(self) -> str:
        return f"pairs={self.pairs}, weight={self.weight}"


class AdapterLoss(FeatureLoss):
    """A :class:`FeatureLoss` owning one shape-dependent trainable adapter per pair.

    Subclasses implement :meth:`make_adapter` ``(student_shape, teacher_shape) -> nn.Module`` (shapes
    without the batch dimension) and optionally :meth:`on_built`.
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.adapters = nn.ModuleList()
        self._shapes: Optional[List[Tuple[Shape, Shape]]] = None

    @property
    def needs_build(self) -> bool:  # type: ignore[override]
        return self._shapes is None

    def make_adapter(self, student_shape: Shape, teacher_shape: Shape) -> nn.Module:  # pragma: no cover
        raise NotImplementedError

    def make_adapters(self, shapes: List[Tuple[Shape, Shape]]) -> List[nn.Module]:
        """All adapters at once (one per pair, in order); override when an adapter depends on its
        neighbours, as ReviewKD's fusion modules do."""
        return [self.make_adapter(s, t) for s, t in shapes]

    def on_built(self, inputs: Optional[DistillInputs]) -> None:
        """Hook after the adapters exist; ``inputs`` is the dry-run batch (None when rebuilt from a checkpoint)."""

    def build(self, inputs: DistillInputs) -> None:
        feats = self.features(inputs)
        shapes = [(tuple(s.shape[1:]), tuple(t.shape[1:])) for s, t in feats]
        self._build_from_shapes(shapes, device=feats[0][0].device)
        self.on_built(inputs)

    def _build_from_shapes(self, shapes: List[Tuple[Shape, Shape]], device: Optional[torch.device] = None) -> None:
        if self._shapes is not None:
            if [tuple(map(tuple, p)) for p in shapes] != [tuple(map(tuple, p)) for p in self._shapes]:
                raise ValueError(f"{type(self).__name__} was built for feature shapes {self._shapes}, "
                                 f"now asked for {shapes}")
            return
        adapters = self.make_adapters([(tuple(s), tuple(t)) for s, t in shapes])
        self.adapters.extend(adapters)
        if device is not None:
            self.adapters.to(device)
        self._shapes = [(tuple(s), tuple(t)) for s, t in shapes]

    def _require_built(self) -> None:
        if self._shapes is None:
            raise RuntimeError(
                f"{type(self).__name__} has not built its adapters yet: DistillationModule does it in setup('fit'); "
                "standalone, call loss.build(inputs) once with an example DistillInputs")

    # Checkpoints carry the observed shapes so an un-built loss can re-create its adapters.
    def get_extra_state(self) -> Dict[str, Any]:
        shapes = None if self._shapes is None else [[list(s), list(t)] for s, t in self._shapes]
        return {"shapes": shapes}

    def set_extra_state(self, state: Any) -> None:
        shapes = state.get("shapes") if isinstance(state, dict) else None
        if shapes is None:
            return
        was_built = self._shapes is not None
        self._build_from_shapes([(tuple(s), tuple(t)) for s, t in shapes])
        if not was_built:
            self.on_built(None)


# ---------------------------------------------------------------------------------- adapter layers
def spatial_dims(shape: Shape, what: str) -> int:
    """Number of spatial dimensions of a feature shape without batch (0 for vectors)."""
    nd = len(shape) - 1
    if nd not in (0, 1, 2, 3):
        raise ValueError(f"{what}: unsupported feature shape {shape} (want [C], [C, L], [C, H, W] or [C, D, H, W])")
    return nd


def conv_bn(in_channels: int, out_channels: int, nd: int, kernel_size: int = 1, relu: bool = False,
            bias: bool = False) -> nn.Sequential:
    """``ConvNd(k, same padding) + BatchNormNd (+ ReLU)``; for ``nd == 0`` a ``Linear + BatchNorm1d``."""
    if nd == 0:
        layers: List[nn.Module] = [nn.Linear(in_channels, out_channels, bias=bias), nn.BatchNorm1d(out_channels)]
    else:
        layers = [_CONV[nd](in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=bias),
                  _BN[nd](out_channels)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def pointwise(in_channels: int, out_channels: int, nd: int, bias: bool = True) -> nn.Module:
    """A 1×1 convolution over maps (``nd`` spatial dims) or a linear layer over vectors."""
    if nd == 0:
        return nn.Linear(in_channels, out_channels, bias=bias)
    return _CONV[nd](in_channels, out_channels, kernel_size=1, bias=bias)


def paired_dims(student_shape: Shape, teacher_shape: Shape, what: str) -> int:
    """The number of spatial dimensions a student and a teacher feature share (an error if they differ)."""
    nd = spatial_dims(student_shape, what)
    if spatial_dims(teacher_shape, what) != nd:
        raise ValueError(f"{what} cannot pair a student feature {student_shape} with a teacher feature "
                         f"{teacher_shape} of another rank; tap layers of the same kind on both models")
    return nd


def stage_decays(n: int, enabled: bool = True) -> List[float]:
    """Per-pair weights ``1 / 2^(n - i - 1)``: the deepest pair 1, each shallower one half the next (OFD's and
    AB's authors weigh stages so); all 1 when not ``enabled``."""
    return [1.0 / 2.0 ** (n - i - 1) if enabled else 1.0 for i in range(n)]
