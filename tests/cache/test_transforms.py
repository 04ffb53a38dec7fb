"""kd_lightning/cache/transforms.py: random data transforms are found (through wrappers) and refuse a cache
unless explicitly allowed."""
from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
from torch import nn
from torch.utils.data import DataLoader

from kd_lightning.cache import (
    TeacherOutputsDataModule,
    RandomTransformError,
    TeacherOutputs,
    find_random_transforms,
)

from .helpers import C, ImageLike


def test_random_transform_is_refused_unless_allowed(tmp_path):
    T = pytest.importorskip("torchvision.transforms")
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, C))
    random = T.Compose([T.RandomCrop(8, padding=1), T.RandomHorizontalFlip(), T.Normalize([0.5] * 3, [0.2] * 3)])
    assert find_random_transforms(random) == ["RandomCrop", "RandomHorizontalFlip"]
    with pytest.raises(RandomTransformError, match=r"RandomCrop.*would not match the augmented view"):
        TeacherOutputs.get_or_build(teacher, ImageLike(random), tmp_path)
    assert not list(Path(tmp_path).iterdir()), "nothing is written for a refused cache"
    allowed = TeacherOutputs.get_or_build(teacher, ImageLike(random), tmp_path, allow_random_transform=True,
                                              device="cpu")
    assert len(allowed) == 12
    # deterministic transforms are fine, and part of the key
    fixed_a = TeacherOutputs.get_or_build(teacher, ImageLike(T.Normalize([0.5] * 3, [0.2] * 3)), tmp_path)
    fixed_b = TeacherOutputs.get_or_build(teacher, ImageLike(T.Normalize([0.4] * 3, [0.2] * 3)), tmp_path)
    assert fixed_a.directory != fixed_b.directory
    # wrappers (Subset, index-adding datasets) are looked through
    from torch.utils.data import Subset

    with pytest.raises(RandomTransformError, match="RandomCrop"):
        TeacherOutputs.get_or_build(teacher, Subset(ImageLike(random), [0, 2, 4]), tmp_path)
    # RandomApply / RandomChoice hide their members one level down
    assert "ColorJitter" in find_random_transforms(T.Compose([T.RandomApply([T.ColorJitter(0.4)], p=0.8)]))


def test_random_transform_refused_by_the_datamodule_wrapper(tmp_path):
    T = pytest.importorskip("torchvision.transforms")

    class DM(L.LightningDataModule):
        def train_dataloader(self):
            return DataLoader(ImageLike(T.RandomHorizontalFlip()), batch_size=4, shuffle=True)

    teacher = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, C))
    with pytest.raises(RandomTransformError, match="RandomHorizontalFlip"):
        TeacherOutputsDataModule(DM(), teacher, tmp_path, splits=("train",)).prepare_outputs()
