"""Models by name, in the manner of timm: ``create_model(name, **kw)`` and ``list_models()``.

Each entry keeps beside its builder the module paths that feature methods tap on it (``taps``:
``stages`` for AT/SP-style methods, ``hint`` for FitNet, ``embedding`` for relation methods, ``last`` (the
deepest stage) for FT and ICKD), so an
architecture is described once; the Hydra application turns every entry into a ``teacher=`` and
``student=`` preset.

>>> net = create_model("resnet8x4", num_classes=100)
>>> "cnn1d_16" in list_models("cnn1d*")
True
"""
from __future__ import annotations

import difflib
import fnmatch
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

from torch import nn


@dataclass(frozen=True)
class ModelEntry:
    """One registered architecture."""

    name: str
    builder: Callable[..., nn.Module]
    description: str
    taps: Dict[str, Any]
    # Builder arguments this preset fixes (cnn1d_16: channels=16).
    kwargs: Dict[str, Any] = field(default_factory=dict)
    # Builder arguments a config shows at its top level (``teacher=torchvision teacher.name=resnet34``).
    top_level: Tuple[str, ...] = ()
    # Builder arguments that come from the data (the class count; a language model's vocabulary size).
    data_args: Tuple[str, ...] = ("num_classes",)
    # What the model does: "classification" (logits [batch, classes]) or "causal_lm" (logits [batch, time, vocab]).
    task: str = "classification"

    def arguments(self) -> Dict[str, Any]:
        """Every builder argument with a default, as this preset sets it (num_classes aside)."""
        out = {}
        for p in inspect.signature(self.builder).parameters.values():
            if p.default is not inspect.Parameter.empty and p.name not in self.data_args and p.kind is not p.VAR_KEYWORD:
                out[p.name] = p.default
        out.update(self.kwargs)
        return out


REGISTRY: Dict[str, ModelEntry] = {}


def register_model(model_name: str, builder: Callable[..., nn.Module], description: str, taps: Dict[str, Any],
                   top_level: Tuple[str, ...] = (), data_args: Tuple[str, ...] = ("num_classes",),
                   task: str = "classification", **kwargs: Any) -> ModelEntry:
    """Add ``model_name`` to the registry; ``kwargs`` are the builder arguments this preset fixes.

    ``data_args`` name the builder arguments that the data decides (``num_classes``; ``vocab_size`` for a
    language model); ``task`` is ``"classification"`` or ``"causal_lm"``.
    """
    if model_name in REGISTRY:
        raise ValueError(f"model {model_name!r} is registered twice")
    taps = dict(taps)
    if taps.get("stages"):  # the deepest stage, for methods that read one late feature (FT, ICKD)
        taps.setdefault("last", taps["stages"][-1])
    entry = ModelEntry(model_name, builder, description, taps, dict(kwargs), tuple(top_level),
                       tuple(data_args), task)
    REGISTRY[model_name] = entry
    return entry


def model_entry(model_name: str) -> ModelEntry:
    if model_name not in REGISTRY:
        close = difflib.get_close_matches(model_name, list(REGISTRY), n=5, cutoff=0.3)
        hint = f"did you mean {', '.join(close)}?" if close else f"choose from {', '.join(sorted(REGISTRY))}"
        raise ValueError(f"unknown model {model_name!r}; {hint}")
    return REGISTRY[model_name]


def create_model(model_name: str, num_classes: Optional[int] = None, **kwargs: Any) -> nn.Module:
    """Build the registered model ``model_name``; ``kwargs`` override the preset's builder arguments."""
    entry = model_entry(model_name)
    args = {**entry.kwargs, **kwargs}
    if num_classes is not None:
        args["num_classes"] = num_classes
    return entry.builder(**args)


def list_models(pattern: str = "*") -> List[str]:
    """Registered names matching a shell-style ``pattern``, sorted."""
    return sorted(n for n in REGISTRY if fnmatch.fnmatchcase(n, pattern))
