"""Feature taps: read intermediate activations of unmodified models by module path.

A tap path names a submodule as ``named_modules()`` spells it (``"layer3"``, ``"features.12"``,
``"blocks.5.mlp"``). By default the submodule's output is captured (the first item of a tuple output);
append ``":in"`` to capture its (first) input instead, e.g. ``"fc:in"`` for the embedding a classifier
head receives, or ``":<k>"`` for item ``k`` of a tuple output, e.g.
``"bert.encoder.layer.0.attention.self:1"`` for a Hugging Face layer's attention probabilities.
"""
from __future__ import annotations

import difflib
from typing import Dict, Iterable, List, Tuple

from torch import Tensor, nn

INPUT_SUFFIX = ":in"


def split_path(path: str) -> Tuple[str, bool]:
    """``"fc:in"`` -> ``("fc", True)``; ``"layer3"`` and ``"attn:1"`` -> (module path, False)."""
    if path.endswith(INPUT_SUFFIX):
        return path[: -len(INPUT_SUFFIX)], True
    name, sep, tail = path.rpartition(":")
    return (name if sep and tail.isdigit() else path), False


def output_index(path: str) -> int:
    """``k`` of a ``"path:k"`` tap (the item of a tuple output to keep); 0 otherwise."""
    _, sep, tail = path.rpartition(":")
    return int(tail) if sep and tail.isdigit() else 0


def resolve(model: nn.Module, path: str, owner: str = "model") -> nn.Module:
    """Return the submodule at ``path`` or raise a ValueError listing the closest names."""
    name, _ = split_path(path)
    modules = dict(model.named_modules())
    if name in modules:
        return modules[name]
    candidates = [n for n in modules if n]
    close = difflib.get_close_matches(name, candidates, n=5, cutoff=0.4)
    hint = f"closest: {', '.join(close)}" if close else f"some valid names: {', '.join(candidates[:8])}"
    raise ValueError(
        f"unknown layer {name!r} in the {owner} ({type(model).__name__}); {hint}. "
        "Paths follow model.named_modules(); append ':in' to tap a module's input."
    )


class FeatureTaps:
    """Forward hooks on ``model`` that store the latest activation of each path in :attr:`features`.

    Use as ``taps = FeatureTaps(model, ["layer3"]); model(x); taps.features["layer3"]``;
    call :meth:`remove` (or use it as a context manager) to detach the hooks.
    """

    def __init__(self, model: nn.Module, paths: Iterable[str], owner: str = "model"):
        self.paths: List[str] = list(dict.fromkeys(paths))
        self.features: Dict[str, Tensor] = {}
        self._handles = []
        # Resolve every path first, so a bad one leaves no hook behind.
        modules = [resolve(model, path, owner) for path in self.paths]
        for path, module in zip(self.paths, modules):
            _, want_input = split_path(path)
            self._handles.append(module.register_forward_hook(self._make_hook(path, want_input, output_index(path))))

    def _make_hook(self, path: str, want_input: bool, item: int):
        def hook(_module, inputs, output):
            value = inputs[0] if want_input else output
            if isinstance(value, (tuple, list)):
                if item >= len(value) or value[item] is None:
                    raise RuntimeError(f"tap {path!r}: the module's output has no item {item} (got "
                                       f"{len(value)} items{'' if item >= len(value) else ', that one None'}); "
                                       "for attention maps use eager attention (attn_implementation='eager')")
                value = value[item]
            self.features[path] = value

        return hook

    def pop(self) -> Dict[str, Tensor]:
        """Return the captured features and forget them, so stale tensors are never reused."""
        feats, self.features = self.features, {}
        missing = [p for p in self.paths if p not in feats]
        if missing:
            raise RuntimeError(
                f"tapped layers {missing} did not run in the forward pass; tap a module that forward() calls"
            )
        return feats

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        self.features = {}

    def __enter__(self) -> "FeatureTaps":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def __len__(self) -> int:
        return len(self.paths)
