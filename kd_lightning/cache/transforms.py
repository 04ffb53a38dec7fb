"""Which data transforms are random: cached teacher outputs are fixed per sample, so they must not be."""
from __future__ import annotations

from typing import Any, List, Mapping, Optional

from torch import nn

# Transform classes whose output changes from call to call (torchvision v1/v2, timm, albumentations names).
_RANDOM_TRANSFORM_NAMES = {
    "AutoAugment", "RandAugment", "TrivialAugmentWide", "AugMix", "ColorJitter", "GaussianBlur",
    "ElasticTransform", "ScaleJitter", "RandomShortestSize", "MixUp", "CutMix", "RandomErasing",
    "RandAugmentMC", "HorizontalFlip", "VerticalFlip",
}



class RandomTransformError(ValueError):
    """Caching teacher outputs for data whose training transform is random."""


def dataset_transform(dataset: Any) -> Any:
    """The transform(s) a dataset applies (``transform``, ``transforms``, ``target_transform``), looking
    through ``Subset``/``ConcatDataset``-style wrappers; None when there is none."""
    found = []
    for attr in ("transform", "transforms", "train_transform"):
        t = getattr(dataset, attr, None)
        if t is not None and not isinstance(t, (str, bytes)):
            found.append(t)
    inner = getattr(dataset, "dataset", None)
    if inner is not None:
        t = dataset_transform(inner)
        if t is not None:
            found.append(t)
    for d in getattr(dataset, "datasets", None) or ():
        t = dataset_transform(d)
        if t is not None:
            found.append(t)
    if not found:
        return None
    return found[0] if len(found) == 1 else found


def find_random_transforms(transform: Any, _seen: Optional[set] = None) -> List[str]:
    """Class names of the random transforms inside ``transform`` (walks Compose, lists, RandomApply, v2)."""
    if transform is None:
        return []
    seen = _seen if _seen is not None else set()
    if id(transform) in seen:
        return []
    seen.add(id(transform))
    out: List[str] = []
    if isinstance(transform, (list, tuple)):
        for t in transform:
            out += find_random_transforms(t, seen)
        return out
    name = type(transform).__name__
    if name.startswith("Random") or name in _RANDOM_TRANSFORM_NAMES:
        out.append(name)
    for attr in ("transforms", "transform", "augmentations"):
        inner = getattr(transform, attr, None)
        if inner is not None and inner is not transform and not isinstance(inner, (str, bytes)):
            if isinstance(inner, Mapping):
                inner = list(inner.values())
            out += find_random_transforms(inner, seen)
    if isinstance(transform, nn.Module):
        for child in transform.children():
            out += find_random_transforms(child, seen)
    return list(dict.fromkeys(out))


def is_auto(transform: Any) -> bool:
    return isinstance(transform, str) and transform == "auto"


def check_transform(dataset: Any, allow_random_transform: bool = False, what: str = "the training data",
                    transform: Any = "auto") -> None:
    """Refuse to cache teacher outputs for a dataset whose transform is random (see the module docstring)."""
    if allow_random_transform:
        return
    random_ones = find_random_transforms(dataset_transform(dataset) if is_auto(transform) else transform)
    if random_ones:
        raise RandomTransformError(
            f"cannot cache teacher outputs for {what}: its transform is random ({', '.join(random_ones)}). "
            "Cached targets are computed once per sample, so they would not match the augmented view the "
            "student sees at each step. Train with the teacher online (no cache), drop the random "
            "transforms, or pass allow_random_transform=True to accept targets of a different view "
            "(Beyer et al. 2022 found such fixed targets generalize worse).")

