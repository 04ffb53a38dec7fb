"""The frozen teacher network: one network or a weighted ensemble, and teachers loaded from checkpoints.

A live teacher is one network or a weighted ensemble (:class:`TeacherEnsemble`), wrapped in
:class:`FrozenTeacher`: it is never trained — its parameters have ``requires_grad=False``, it stays in
eval mode (see :meth:`FrozenTeacher.train`), and its forward runs under ``torch.no_grad()`` — and it gives
classifier logits ``[B, C]`` (:meth:`FrozenTeacher.forward`) or next-token logits ``[B, T, V]``
(:meth:`FrozenTeacher.token_logits`) through the same ensemble rule. Where a module's teacher signal comes
from — this network, or stored outputs that the batches carry — is :mod:`kd_lightning.signal`'s concern.
"""
from __future__ import annotations

import os
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .forward import Inputs, call, call_signature, final_hidden, fused_head_problem, lm_logits, logits_of
from .io import state_dict_sha256

TeacherSource = Union[nn.Module, Sequence[nn.Module], str, os.PathLike]

# Key prefixes under which a Lightning checkpoint of this project stores a plain classifier.
_CKPT_PREFIXES = ("student.", "model.", "net.")


def load_state_dict_file(path: Union[str, os.PathLike]) -> dict:
    """Read a Lightning checkpoint or a plain ``state_dict`` file; return the model's own keys."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"teacher checkpoint not found: {path!r}; pass an existing .ckpt/.pt file "
            "(or leave the teacher checkpoint unset to train a teacher)"
        )
    blob = read_checkpoint(path)
    if not isinstance(blob, dict):
        raise ValueError(f"{path!r} holds a {type(blob).__name__}, not a checkpoint or a state_dict")
    if "state_dict" not in blob:  # a plain state_dict file: its keys are the model's own
        return dict(blob)
    state = blob["state_dict"]
    for prefix in _CKPT_PREFIXES:
        if any(k.startswith(prefix) for k in state):
            # A teacher inside a distillation checkpoint (save_teacher=True) is not what we want.
            return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    return dict(state)


def read_checkpoint(path: Union[str, os.PathLike]) -> object:
    """``torch.load`` on the CPU, with an error that names the file when it is empty, truncated or not a
    checkpoint (torch's own errors name neither the file nor the problem)."""
    path = os.fspath(path)
    size = os.path.getsize(path)
    if size == 0:
        raise ValueError(f"checkpoint {path!r} is empty (0 bytes): it was not written completely; "
                         "point at a complete .ckpt/.pt file (or train it again)")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:
        raise ValueError(f"checkpoint {path!r} ({size} bytes) cannot be read, it is truncated or not a torch "
                         f"checkpoint ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); "
                         "point at a complete .ckpt/.pt file (or train it again)") from None
    recorded = blob.get("weights_sha256") if isinstance(blob, dict) else None
    if recorded and isinstance(blob.get("state_dict"), dict) and state_dict_sha256(blob["state_dict"]) != recorded:
        raise ValueError(f"checkpoint {path!r} holds weights that differ from the digest written with them (the "
                         "file changed after it was saved: a damaged copy or disk); copy it again from its source "
                         "(or train it again)")
    return blob


def describe_mismatch(architecture: nn.Module, state: dict, limit: int = 4) -> str:
    """The first few missing, unexpected and wrongly shaped keys of ``state`` against ``architecture``."""
    own = architecture.state_dict()
    parts = []
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
              if k in state and hasattr(state[k], "shape") and tuple(state[k].shape) != tuple(v.shape)]
    for label, items in (("missing", missing), ("unexpected", unexpected), ("shape checkpoint vs model", shapes)):
        if items:
            more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
            parts.append(f"{label}: {', '.join(items[:limit])}{more}")
    return "; ".join(parts)


def load_teacher(source: Union[str, os.PathLike], architecture: Optional[nn.Module]) -> nn.Module:
    """Load checkpoint ``source`` into ``architecture`` (strictly: a wrong architecture is an error)."""
    if architecture is None:
        raise ValueError(
            f"teacher is the checkpoint path {os.fspath(source)!r}: also pass the architecture "
            "(teacher_architecture=<nn.Module>) so its weights have somewhere to go"
        )
    state = load_state_dict_file(source)
    try:
        architecture.load_state_dict(state, strict=True)
    except RuntimeError as err:
        detail = describe_mismatch(architecture, state) or str(err).splitlines()[0]
        raise ValueError(
            f"checkpoint {os.fspath(source)!r} does not fit {type(architecture).__name__} ({detail}); "
            "check the architecture and its num_classes"
        ) from None
    return architecture


class TeacherEnsemble(nn.Module):
    """Several teachers as one: averages their logits, or their softened probabilities.

    ``mode="probs"`` averages ``softmax(z_k / T)`` (weighted) and returns ``T * log(p_avg)``, which are
    logits whose softmax at temperature ``T`` is exactly the averaged distribution; ``T`` is the
    distillation temperature (set by :class:`~kd_lightning.DistillationModule` from its loss).
    ``mode="logits"`` returns the weighted mean of the raw logits.

    Members' outputs may have any leading shape (``[B, C]`` for classifiers, ``[B, T, V]`` for causal LMs);
    the average is over the last dimension's distributions. Given ``attention_mask``, each member is called
    as a causal LM (:func:`~kd_lightning.forward.lm_logits`, passing the mask to members that take it).
    """

    def __init__(self, teachers: Sequence[nn.Module], weights: Optional[Sequence[float]] = None,
                 mode: str = "probs", temperature: float = 1.0):
        super().__init__()
        if len(teachers) == 0:
            raise ValueError("a teacher ensemble needs at least one teacher")
        if mode not in ("probs", "logits"):
            raise ValueError(f"ensemble mode must be 'probs' or 'logits', got {mode!r}")
        weights = [1.0] * len(teachers) if weights is None else [float(w) for w in weights]
        if len(weights) != len(teachers) or any(w < 0 for w in weights) or sum(weights) <= 0:
            raise ValueError(f"need one non-negative weight per teacher ({len(teachers)}), got {weights}")
        self.members = nn.ModuleList(teachers)
        self.register_buffer("weights", torch.tensor(weights) / sum(weights), persistent=False)
        self.mode = mode
        self.temperature = float(temperature)
        self.signatures = [call_signature(m) for m in teachers]

    def forward(self, x: Inputs, attention_mask: Optional[Tensor] = None) -> Tensor:
        if attention_mask is None:
            outs = [logits_of(call(m, x), "ensemble teacher") for m in self.members]
        else:
            outs = [lm_logits(m, x, attention_mask, *sig) for m, sig in zip(self.members, self.signatures)]
        outs = [o.float() for o in outs]
        shapes = {tuple(o.shape) for o in outs}
        if len(shapes) != 1:
            raise ValueError(f"ensemble teachers disagree on their output shapes: {sorted(shapes)}")
        stacked = torch.stack(outs)  # [K, *batch, C]
        w = self.weights.view(-1, *([1] * (stacked.ndim - 1)))
        if self.mode == "logits":
            return (w * stacked).sum(0)
        t = self.temperature
        probs = (w * F.softmax(stacked / t, dim=-1)).sum(0)
        return t * torch.log(probs.clamp_min(torch.finfo(probs.dtype).tiny))


class FrozenTeacher(nn.Module):
    """Wraps a teacher so that nothing can train it or move its BatchNorm statistics."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        self.net.requires_grad_(False)
        self.train(False)
        self.signature = call_signature(net)

    def train(self, mode: bool = True) -> "FrozenTeacher":
        # Lightning calls .train() on the whole LightningModule each epoch; the teacher ignores it.
        super().train(False)
        return self

    def settle(self) -> None:
        # Whatever flags it was given (TeacherStudentModule.on_fit_start lifts them for Lightning's check, a
        # failed fit may leave them so), the teacher never runs in train mode.
        if self.training:
            self.train(False)

    def forward(self, x: Inputs) -> Tensor:
        """The teacher's logits for ``x`` (a tensor or keyword inputs), without a graph."""
        self.settle()
        with torch.no_grad():
            return logits_of(call(self.net, x), "teacher")

    def token_logits(self, input_ids: Tensor, attention_mask: Optional[Tensor]) -> Tensor:
        """A causal-LM teacher's next-token logits ``[B, T, V]``, without a graph."""
        self.settle()
        with torch.no_grad():
            return lm_logits(self.net, input_ids, attention_mask, *self.signature)

    def head_problem(self) -> Optional[Tuple[type, str]]:
        """Why this teacher's output layer cannot be fused into a token loss (None: it can); see
        :func:`~kd_lightning.forward.fused_head_problem`."""
        if isinstance(self.net, TeacherEnsemble):
            # its target is a weighted mix of the members' distributions, which no one output layer gives
            return TypeError, "a teacher ensemble averages its members' outputs, which no single output layer gives"
        return fused_head_problem(self.net)

    def token_hidden(self, input_ids: Tensor, attention_mask: Optional[Tensor]) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
        """A causal-LM teacher's final hidden states ``[B, T, H]`` with its output layer's weight ``[V, H]`` and
        bias, without a graph (:func:`~kd_lightning.forward.final_hidden`): its logits, left uncomputed."""
        self.settle()
        with torch.no_grad():
            return final_hidden(self.net, input_ids, attention_mask)


def build_teacher(source: Optional[TeacherSource], architecture: Optional[nn.Module] = None,
                  ensemble_weights: Optional[Sequence[float]] = None, ensemble_mode: str = "probs",
                  temperature: float = 1.0) -> Optional[FrozenTeacher]:
    """Turn whatever the user passed as ``teacher`` into a :class:`FrozenTeacher` (or None)."""
    if source is None:
        return None
    if isinstance(source, (str, os.PathLike)):
        net: nn.Module = load_teacher(source, architecture)
    elif isinstance(source, nn.Module):
        net = source
    elif isinstance(source, (list, tuple)):
        if not all(isinstance(t, nn.Module) for t in source):
            raise TypeError("a teacher list must hold nn.Module objects")
        net = source[0] if len(source) == 1 else TeacherEnsemble(
            list(source), ensemble_weights, ensemble_mode, temperature)
    else:
        raise TypeError(f"teacher must be an nn.Module, a list of them or a checkpoint path, got {type(source).__name__}")
    return FrozenTeacher(net)
