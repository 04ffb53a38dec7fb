"""Models from torchvision and timm by name, for ImageNet-scale teachers and students.

``torchvision_model("resnet34", weights="DEFAULT")`` and ``timm_model("resnet18", pretrained=True)``
download weights into the usual caches (``$TORCH_HOME/hub/checkpoints`` for torchvision, the Hugging
Face cache for timm). When a download is impossible (an offline cluster node) they raise one
RuntimeError that says how to fix it, instead of a long network traceback. The classifier head is
replaced when ``num_classes`` differs from the class count of the weights.
"""
from __future__ import annotations

import difflib
import os
import socket
from typing import Any, Iterable, Optional, Union
from urllib.parse import urlparse

from torch import nn

_NO_WEIGHTS = ("", "none", "null", "false", "random")


def _unknown_name(kind: str, name: str, names: Iterable[str]) -> ValueError:
    names = list(names)
    close = difflib.get_close_matches(name, names, n=6, cutoff=0.5)
    hint = f"closest: {', '.join(close)}" if close else f"{len(names)} names are available"
    return ValueError(f"unknown {kind} model {name!r}; {hint}")


def _replace_heads(model: nn.Module, old_classes: int, num_classes: int) -> nn.Module:
    """Swap every classification layer (a Linear, or a 1x1 Conv2d as in SqueezeNet, with
    ``old_classes`` outputs — auxiliary heads included) for a freshly initialized one."""
    targets = []
    for path, m in model.named_modules():
        if isinstance(m, nn.Linear) and m.out_features == old_classes:
            targets.append((path, nn.Linear(m.in_features, num_classes, bias=m.bias is not None)))
        elif isinstance(m, nn.Conv2d) and m.out_channels == old_classes and m.kernel_size == (1, 1):
            targets.append((path, nn.Conv2d(m.in_channels, num_classes, kernel_size=1, bias=m.bias is not None)))
    if not targets:
        raise RuntimeError(
            f"could not find the classifier of {type(model).__name__} (no layer with {old_classes} outputs) "
            f"to resize it to num_classes={num_classes}")
    for path, new in targets:
        parent_path, _, attr = path.rpartition(".")
        parent = model.get_submodule(parent_path) if parent_path else model
        setattr(parent, attr, new)
    return model


def torchvision_model(name: str, num_classes: int = 1000, weights: Optional[Union[str, bool]] = None,
                      **kwargs: Any) -> nn.Module:
    """A torchvision classification model by name (``"resnet18"``, ``"vit_b_16"`` ...).

    Args:
        weights: ``None`` for random initialization, or a weights name of that model
            (``"DEFAULT"``, ``"IMAGENET1K_V1"``, ``"ResNet34_Weights.IMAGENET1K_V1"``; ``True`` = DEFAULT).
        num_classes: the output size; with weights whose class count differs, the head is re-initialized.
        kwargs: passed to the torchvision builder.
    """
    import torchvision.models as tvm

    names = tvm.list_models(module=tvm)
    if name not in names:
        raise _unknown_name("torchvision", name, names)
    if weights is None or weights is False or (isinstance(weights, str) and weights.strip().lower() in _NO_WEIGHTS):
        return tvm.get_model(name, weights=None, num_classes=num_classes, **kwargs)

    enum = tvm.get_model_weights(name)
    try:
        chosen = enum.verify("DEFAULT" if weights is True else weights)
    except (KeyError, TypeError):
        raise ValueError(f"unknown weights {weights!r} for torchvision model {name!r}; available: "
                         f"{', '.join(enum.__members__)} (or null for random initialization)") from None
    import torch.hub

    cache_dir = os.path.join(torch.hub.get_dir(), "checkpoints")
    cached = os.path.join(cache_dir, os.path.basename(urlparse(chosen.url).path))
    try:
        model = tvm.get_model(name, weights=chosen, **kwargs)
    except Exception as err:  # URLError / HTTP errors / a truncated file: all end in the same advice
        if isinstance(err, TypeError):  # a wrong keyword argument, not a download problem
            raise
        if os.path.exists(cached):
            problem = f"the cached file {cached} could not be loaded ({type(err).__name__}: {err}); delete it"
        else:
            problem = (f"the weights could not be downloaded to {cache_dir} ({type(err).__name__}: {err}); "
                       "this machine is probably offline")
        raise RuntimeError(
            f"torchvision model {name!r} with weights {chosen}: {problem}. To fix: on a machine with internet "
            f"access run  python -c \"import torchvision; torchvision.models.get_model('{name}', "
            f"weights='{chosen.name}')\"  and copy the cache over (point TORCH_HOME at it; the file goes to "
            f"$TORCH_HOME/hub/checkpoints/{os.path.basename(cached)}), or train without pretrained weights: "
            "weights=null (e.g. teacher.weights=null).") from err
    pretrained_classes = len(chosen.meta.get("categories") or [])
    if pretrained_classes and num_classes != pretrained_classes:
        _replace_heads(model, pretrained_classes, num_classes)
    return model


def _timm_unreachable(name: str) -> Optional[str]:
    """Why the pretrained weights of ``name`` cannot be fetched now, or None (cached, or worth trying).

    The Hugging Face client retries a dead connection with back-off for a minute or more per file;
    when the weights are not cached and the hub cannot be reached, fail at once instead.
    """
    try:
        from huggingface_hub import try_to_load_from_cache
        from timm.models import get_pretrained_cfg

        cfg = get_pretrained_cfg(name)
        repo = getattr(cfg, "hf_hub_id", None)
        if not repo:
            return None  # weights served from a plain URL: torch.hub fails fast by itself
        files = [getattr(cfg, "hf_hub_filename", None), "model.safetensors", "pytorch_model.bin"]
        if any(isinstance(try_to_load_from_cache(repo, f), str) for f in files if f):
            return None
    except Exception:  # unknown layout of this timm / huggingface_hub version: let timm decide
        return None
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return f"HF_HUB_OFFLINE is set and {repo} is not in the Hugging Face cache"
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None  # a proxy may reach what a direct connection cannot
    endpoint = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    try:
        socket.create_connection((endpoint.hostname, endpoint.port or 443), timeout=5).close()
    except OSError as err:
        return f"{endpoint.hostname} cannot be reached ({err}) and {repo} is not in the Hugging Face cache"
    return None


def _timm_offline_error(name: str, problem: str) -> RuntimeError:
    return RuntimeError(
        f"timm model {name!r}: the pretrained weights could not be downloaded or loaded ({problem}). "
        f"To fix: on a machine with internet access run  python -c \"import timm; timm.create_model('{name}', "
        "pretrained=True)\"  and copy the Hugging Face cache over (point HF_HOME or HF_HUB_CACHE at it, and set "
        "HF_HUB_OFFLINE=1), or train without pretrained weights: pretrained=false (e.g. teacher.pretrained=false).")


def timm_model(name: str, num_classes: int = 1000, pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """A timm model by name (``"resnet18"``, ``"resnet50.a1_in1k"``, ``"vit_small_patch16_224"`` ...).

    With ``pretrained=True`` the weights come from the Hugging Face hub cache; timm itself drops the
    pretrained classifier when ``num_classes`` differs from it.
    """
    import timm

    if not timm.is_model(name):
        raise _unknown_name("timm", name, timm.list_models())
    if not pretrained:
        return timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs)
    reason = _timm_unreachable(name)
    if reason:
        raise _timm_offline_error(name, reason)
    try:
        return timm.create_model(name, pretrained=True, num_classes=num_classes, **kwargs)
    except Exception as err:
        if isinstance(err, TypeError):  # a wrong keyword argument, not a download problem
            raise
        raise _timm_offline_error(name, f"{type(err).__name__}: {err}") from err
