"""The contract every distillation loss follows.

A loss is an ``nn.Module`` that receives one inputs object per step and returns a dict of named scalar
terms whose ``"loss"`` entry is the weighted total that gets back-propagated. It declares

* its family, i.e. the inputs it takes (``families``): ``"classifier"`` losses read a
  :class:`DistillInputs` (logits ``[batch, classes]``, labels, features), ``"token"`` losses a
  :class:`TokenInputs` (causal-LM logits ``[batch, time, vocab]``, labels with -100 for no loss, the
  attention mask). A loss that reads only features (hidden states) can belong to both. A module refuses a
  loss of another family at construction (:func:`check_family`), and :class:`Compose` refuses to mix them;
* the features it needs through ``student_taps`` / ``teacher_taps`` (module paths, see
  :mod:`kd_lightning.taps`), and it owns any trainable adapters, so the module's optimizer picks them up.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from .functional.response import hard_label_ce


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
    # Dataset indices of the samples (CRD's memory bank, stored teacher outputs); None when unknown.
    index: Optional[Tensor] = None
    # Per-sample mask of which samples carry a usable label (transfer sets have none).
    labeled: Optional[Tensor] = None

    @property
    def batch_size(self) -> int:
        return self.student_logits.shape[0]


@dataclass
class TokenInputs:
    """Everything a token loss may look at for one batch of a causal LM.

    ``student_logits`` is ``[B, L, V]`` (None with the fused head: ``student_hidden [B, L, H]`` and the
    output layer's ``lm_head_weight [V, H]`` / ``lm_head_bias`` instead). The teacher's signal is either its
    logits ``[B, L, V]`` (a live teacher or an ensemble), ``teacher_topk = (ids [B,L,k], logprobs [B,L,k],
    rest [B,L])`` (stored top-k outputs), or, with the fused student head, its final hidden states
    ``teacher_hidden [B, L, H_t]`` with ``teacher_lm_head_weight [V, H_t]`` / ``teacher_lm_head_bias`` (its
    head fused too). ``num_tokens`` is the divisor of the sums (None: each term's own count). Features are
    the tapped activations, as for classifiers.
    """

    student_logits: Optional[Tensor]
    labels: Tensor
    teacher_logits: Optional[Tensor] = None
    attention_mask: Optional[Tensor] = None
    num_tokens: Optional[Union[int, float, Tensor]] = None
    student_hidden: Optional[Tensor] = None
    lm_head_weight: Optional[Tensor] = None
    lm_head_bias: Optional[Tensor] = None
    teacher_topk: Optional[Tuple[Tensor, Tensor, Tensor]] = None
    teacher_hidden: Optional[Tensor] = None
    teacher_lm_head_weight: Optional[Tensor] = None
    teacher_lm_head_bias: Optional[Tensor] = None
    student_features: Dict[str, Tensor] = field(default_factory=dict)
    teacher_features: Dict[str, Tensor] = field(default_factory=dict)
    epoch: float = 0.0

    @property
    def batch_size(self) -> int:
        return self.labels.shape[0]


CLASSIFIER = "classifier"
TOKEN = "token"
# What each family's losses take, for the one-line refusals.
FAMILY_INPUTS = {CLASSIFIER: "classifier logits [batch, classes] with labels and features (DistillInputs)",
                 TOKEN: "causal-LM logits [batch, time, vocab] with token labels (TokenInputs)"}


def family_names(families: Sequence[str]) -> str:
    return " or ".join(repr(f) for f in families)


def check_family(loss: nn.Module, family: str, who: str) -> None:
    """Refuse ``loss`` unless it takes ``family``'s inputs, in one line naming both families."""
    families = tuple(getattr(loss, "families", ()))
    if family not in families:
        raise TypeError(
            f"{who} trains the {family!r} family ({FAMILY_INPUTS[family]}), but {type(loss).__name__} is a "
            f"{family_names(families)} loss ({'; '.join(FAMILY_INPUTS.get(f, f) for f in families)}); give it a "
            f"loss of the {family!r} family")


class Loss(nn.Module):
    """Base class: subclasses implement :meth:`forward` returning ``{"loss": total, term: value, ...}``.

    ``needs_teacher`` is False for labels-only losses (the module then runs no teacher);
    ``needs_target`` says whether hard labels are weighed in (DistillationModule refuses unlabeled
    training batches then, instead of logging a CE of zero).
    Terms other than ``"loss"`` are logged unweighted under ``train/<name>``.
    """

    #: the input families this loss takes (see the module docstring); classifier losses by default.
    families: Tuple[str, ...] = (CLASSIFIER,)
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


class CompositeLoss(Loss):
    """A loss made of others (:class:`Compose`, :class:`Staged`): what it needs is what its parts need."""

    def parts(self) -> List[Loss]:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def families(self) -> Tuple[str, ...]:  # type: ignore[override]
        """The families every part takes."""
        parts = self.parts()
        return tuple(f for f in parts[0].families if all(f in o.families for o in parts[1:]))

    def check_families(self) -> None:
        if not self.families:
            named = ", ".join(f"{type(o).__name__} ({family_names(o.families)})" for o in self.parts())
            raise TypeError(f"{type(self).__name__} mixes loss families: {named}; combine losses of one family "
                            f"(classifier losses with classifier losses, token losses with token losses)")

    @property
    def needs_teacher(self) -> bool:  # type: ignore[override]
        return any(o.needs_teacher for o in self.parts())

    @property
    def needs_target(self) -> bool:  # type: ignore[override]
        return any(o.needs_target for o in self.parts())

    @property
    def needs_index(self) -> bool:  # type: ignore[override]
        return any(o.needs_index for o in self.parts())

    @property
    def student_taps(self) -> List[str]:
        return _unique(p for o in self.parts() for p in o.student_taps)

    @property
    def teacher_taps(self) -> List[str]:
        return _unique(p for o in self.parts() for p in o.teacher_taps)

    @property
    def needs_build(self) -> bool:  # type: ignore[override]
        return any(o.needs_build for o in self.parts())

    def build(self, inputs: DistillInputs) -> None:
        for o in self.parts():
            if o.needs_build:
                o.build(inputs)

    @property
    def temperature(self) -> Optional[float]:
        """The first part's temperature (the teacher ensemble averages softened probabilities at it)."""
        for o in self.parts():
            if getattr(o, "temperature", None) is not None:
                return o.temperature
        return None


class Compose(CompositeLoss):
    """Sum of several losses; each keeps its own weights and its term names.

    ``Compose([KD(...), AT(...)])`` logs ``ce``, ``kd``, ``at`` and back-propagates their weighted sum.
    Two losses producing the same term name is an error, because the log would be ambiguous.
    """

    def __init__(self, losses: Sequence[Loss]):
        super().__init__()
        if not losses:
            raise ValueError("Compose needs at least one loss")
        self.losses = nn.ModuleList(losses)
        self.check_families()

    def parts(self) -> List[Loss]:
        return list(self.losses)

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


# ------------------------------------------------------------------ helpers the losses share
def require_teacher_logits(inputs: DistillInputs, who: str) -> Tensor:
    if inputs.teacher_logits is None:
        raise ValueError(
            f"{who} needs teacher logits, but DistillInputs.teacher_logits is None; give the module a "
            "teacher (or a batch carrying teacher logits), or use CE() for labels-only training")
    return inputs.teacher_logits


def ce_term(inputs: DistillInputs, ce_weight: float, label_smoothing: float = 0.0) -> Tensor:
    """Hard-label CE for the logged ``"ce"`` term.

    Returns a zero fp32 scalar (no graph) when ``ce_weight == 0`` (CE is then not computed at all) or when
    the batch has no labels (``inputs.target is None``, e.g. an unlabeled transfer set).
    """
    if ce_weight == 0 or inputs.target is None:
        return torch.zeros((), dtype=torch.float32, device=inputs.student_logits.device)
    return hard_label_ce(inputs.student_logits, inputs.target, inputs.labeled, label_smoothing)


def weighted_total(inputs: DistillInputs, *weighted: Tuple[float, Tensor]) -> Tensor:
    """``Σ w · term`` over the pairs with ``w != 0`` (a zero weight never turns a NaN term into the loss).

    If nothing contributes, returns a zero that is still attached to the student's graph.
    """
    total: Optional[Tensor] = None
    for weight, term in weighted:
        if weight != 0:
            total = weight * term if total is None else total + weight * term
    if total is None:
        total = inputs.student_logits.float().sum() * 0.0
    return total


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
