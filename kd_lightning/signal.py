"""TeacherSignal: where the teacher's distribution comes from, behind one call that both model families make.

The base module (:class:`~kd_lightning.base.TeacherStudentModule`) holds one signal as ``teacher_signal``;
a family module calls it on every batch and gets a :class:`TeacherOutput`::

    out = self.teacher_signal(batch, inputs, attention_mask, taps=teacher_taps, required=training)

Kinds:

* :class:`NoTeacher` — labels-only training: the output is empty.
* :class:`LiveTeacher` — a :class:`~kd_lightning.teacher.FrozenTeacher` (one network, or a weighted
  :class:`~kd_lightning.teacher.TeacherEnsemble`) run on ``inputs``: classifier logits ``[B, C]``, or
  next-token logits ``[B, T, V]`` when the family is the token one, plus the teacher's tapped features.
  Asked with ``fused_head=True``, a token teacher that is one Hugging Face-style network
  (:attr:`LiveTeacher.fuses_head`) runs its base model only and gives its final hidden states and output
  layer instead of its logits, for a loss that computes the logits chunk by chunk.
* :class:`StoredOutputs` — what the batch carries from the output store (:mod:`kd_lightning.cache`):
  dense ``teacher_logits``, or top-k rows (:data:`~kd_lightning.batch.TOPK_KEYS`: ids, log-probabilities
  at the stored temperature, the rest of the mass, the temperature).

One rule for every kind: a batch that carries stored outputs is read instead of running a network, unless
the loss taps the teacher's features (only a network has them). The stored top-k signal is checked once,
on its first batch (:meth:`TeacherSignal.check`): its temperature against the loss's and its ids against
the compared width; one store serves the whole fit, so later batches need no device sync.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional, Tuple

import torch
from torch import Tensor

from .batch import TOPK_KEYS
from .cache.topk import reconstruct_topk
from .losses.base import TOKEN
from .taps import FeatureTaps
from .teacher import FrozenTeacher

TopK = Tuple[Tensor, Tensor, Tensor]


@dataclass
class TeacherOutput:
    """The teacher's signal for one batch.

    ``logits``: dense logits (``[B, C]`` or ``[B, T, V]``); ``topk``: ``(ids [..., k], logprobs [..., k],
    rest [...])`` with the log-probabilities taken at ``temperature``; ``hidden`` with ``head``: the final
    hidden states ``[B, T, H]`` and the output layer ``(weight [V, H], bias [V] or None)`` whose product
    would be the logits (a fused head). At most one of the three is set (none: no teacher). ``features``:
    the teacher's tapped activations.
    """

    logits: Optional[Tensor] = None
    topk: Optional[TopK] = None
    temperature: Optional[Tensor] = None
    features: Dict[str, Tensor] = field(default_factory=dict)
    hidden: Optional[Tensor] = None
    head: Optional[Tuple[Tensor, Optional[Tensor]]] = None

    @property
    def present(self) -> bool:
        return self.logits is not None or self.topk is not None or self.hidden is not None

    def dense(self, width: int) -> Optional[Tensor]:
        """Logits over ``width`` classes: the dense ones, or logits rebuilt from the top-k rows whose softmax at
        the stored temperature ``T`` is the stored top-k probabilities with the rest spread evenly
        (``T · z'``, ``z'`` from :func:`~kd_lightning.cache.topk.reconstruct_topk`), so a loss that softens
        them at ``T`` sees exactly the stored distribution."""
        if self.logits is not None or self.topk is None:
            return self.logits
        ids, logprobs, rest = self.topk
        lead, k = ids.shape[:-1], ids.shape[-1]
        z = reconstruct_topk(logprobs.reshape(-1, k), ids.reshape(-1, k), width, rest.reshape(-1))
        z = z.reshape(*lead, width)
        if self.temperature is None:
            return z
        t = self.temperature.to(device=z.device, dtype=z.dtype)
        # One temperature per sample (as collated) or one for all: broadcast over the rest of the row.
        return z * (t.reshape(-1, *([1] * len(lead))) if t.ndim else t)


def carries_outputs(batch: Any) -> bool:
    """True when ``batch`` is a mapping that holds stored teacher outputs (dense or top-k)."""
    return isinstance(batch, Mapping) and ("teacher_logits" in batch or any(k in batch for k in TOPK_KEYS))


def stored_output(batch: Any) -> TeacherOutput:
    """The stored teacher outputs ``batch`` carries (an empty output when it carries none)."""
    if not carries_outputs(batch):
        return TeacherOutput()
    if batch.get("teacher_logits") is not None:
        return TeacherOutput(logits=batch["teacher_logits"])
    missing = [k for k in TOPK_KEYS if k not in batch]
    if missing:
        raise ValueError(f"the batch carries stored top-k teacher outputs without {', '.join(missing)}; a batch needs "
                         f"all of {', '.join(TOPK_KEYS)} (the stored-output data modules of kd_lightning.cache add them)")
    return TeacherOutput(topk=(batch["teacher_topk_ids"], batch["teacher_topk_logprobs"], batch["teacher_rest"]),
                         temperature=batch["teacher_temperature"])


class TeacherSignal:
    """Where the teacher's distribution comes from; see the module docstring. Not an ``nn.Module``: the
    network of a live signal is the base module's ``teacher`` (so checkpoint keys stay ``teacher.*``)."""

    #: the frozen teacher network, for live signals (None otherwise).
    network: Optional[FrozenTeacher] = None

    def __init__(self) -> None:
        self.checked = False

    def __call__(self, batch: Any, inputs: Any, attention_mask: Optional[Tensor] = None,
                 taps: Optional[FeatureTaps] = None, required: bool = False,
                 fused_head: bool = False) -> TeacherOutput:
        """The teacher's output for ``batch``, whose network inputs are ``inputs`` (``attention_mask`` for
        causal LMs); ``taps`` collects the teacher's features; ``required`` refuses a batch without
        stored outputs where they are the signal; ``fused_head`` asks for the final hidden states and the
        output layer instead of the logits, which only a signal that :attr:`fuses_head` gives (the others
        answer as without it)."""
        return self.read(batch, inputs, attention_mask, taps, required, fused_head)

    @property
    def fuses_head(self) -> bool:
        """Whether ``fused_head=True`` gets hidden states and an output layer from this signal."""
        return False

    def read(self, batch: Any, inputs: Any, attention_mask: Optional[Tensor], taps: Optional[FeatureTaps],
             required: bool, fused_head: bool = False) -> TeacherOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def check(self, output: TeacherOutput, width: int, temperature: float) -> None:
        """Once, on the first output with a top-k signal: its temperature must be the loss's and its ids
        within the ``width`` compared classes or tokens."""
        if self.checked or output.topk is None:
            return
        ids = output.topk[0]
        stored = output.temperature
        if stored is not None and not torch.allclose(stored.float(), torch.full_like(stored.float(), temperature)):
            raise ValueError(f"the stored teacher log-probabilities were taken at T={float(stored.flatten()[0])} "
                             f"but the loss uses T={temperature}; store the teacher outputs again at the loss's "
                             "temperature")
        if ids.numel() and int(ids.max()) >= int(width):
            raise ValueError(f"the stored teacher outputs hold id {int(ids.max())}, outside the student's "
                             f"vocabulary of {width} classes or tokens: they were stored for another vocabulary "
                             "or class set")
        self.checked = True

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class NoTeacher(TeacherSignal):
    """No teacher: labels-only training (the loss must not need one)."""

    def read(self, batch, inputs, attention_mask, taps, required, fused_head=False) -> TeacherOutput:
        return TeacherOutput()


class StoredOutputs(TeacherSignal):
    """The teacher outputs the batch carries; ``hint`` says how to make batches carry them."""

    def __init__(self, hint: str = "wrap the data module in one of kd_lightning.cache's stored-output data "
                                   "modules so batches carry the stored teacher outputs"):
        super().__init__()
        self.hint = hint

    def read(self, batch, inputs, attention_mask, taps, required, fused_head=False) -> TeacherOutput:
        out = stored_output(batch)
        if required and not out.present:
            keys = sorted(batch) if isinstance(batch, Mapping) else type(batch).__name__
            raise ValueError(f"training on stored teacher outputs, but the batch has no {', '.join(TOPK_KEYS)} (nor "
                             f"teacher_logits; it holds {keys}); {self.hint}")
        return out


class LiveTeacher(TeacherSignal):
    """A frozen teacher network (or ensemble) run on the batch; ``family`` says which logits it gives."""

    def __init__(self, network: FrozenTeacher, family: str):
        super().__init__()
        if not isinstance(network, FrozenTeacher):
            raise TypeError(f"a live teacher signal takes a FrozenTeacher, got {type(network).__name__}")
        self.network, self.family = network, family

    @property
    def fuses_head(self) -> bool:
        """True for a token teacher that is one Hugging Face-style network (not an ensemble)."""
        return self.family == TOKEN and self.network.head_problem() is None

    def read(self, batch, inputs, attention_mask, taps, required, fused_head=False) -> TeacherOutput:
        if taps is None:
            out = stored_output(batch)
            if out.present:
                return out
        if fused_head and self.fuses_head:
            hidden, weight, bias = self.network.token_hidden(inputs, attention_mask)
            out = TeacherOutput(hidden=hidden, head=(weight, bias))
        elif self.family == TOKEN:
            out = TeacherOutput(logits=self.network.token_logits(inputs, attention_mask))
        else:
            out = TeacherOutput(logits=self.network(inputs))
        if taps is not None:
            out.features = taps.pop()
        return out

    def __repr__(self) -> str:
        return f"LiveTeacher({type(self.network.net).__name__}, family={self.family!r})"


def teacher_signal(network: Optional[FrozenTeacher], family: str, stored: bool,
                   hint: Optional[str] = None) -> TeacherSignal:
    """The signal of a module's arguments: its live teacher, else the stored outputs when the batches carry
    them (``stored``), else none."""
    if network is not None:
        return LiveTeacher(network, family)
    if stored:
        return StoredOutputs(hint) if hint is not None else StoredOutputs()
    return NoTeacher()
