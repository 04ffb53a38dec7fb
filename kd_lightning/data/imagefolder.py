"""ImageNet-style folders (``<data_dir>/train/<class>/*.JPEG``, ``<data_dir>/val/<class>/*``) as a
LightningDataModule with the standard ImageNet transforms.

Training: RandomResizedCrop(image_size) + horizontal flip; evaluation: Resize(image_size * 256/224)
+ CenterCrop(image_size); both normalized with the ImageNet channel statistics. The validation
folder also serves as the test split (ImageNet's test labels are not public).
"""
from __future__ import annotations

import logging
import os
from typing import Any, List, Optional

import lightning as L
from torch.utils.data import DataLoader, Dataset

from .loaders import SplitLoaders
from .indexed import IndexedDataset

log = logging.getLogger(__name__)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class UnreadableImageError(ValueError):
    """An image file that PIL cannot decode (corrupt, truncated, or not an image); the message names it."""

    def __init__(self, message: str):
        # A DataLoader worker re-raises this with the worker's traceback around the message: keep the message.
        # (its last line is "<module>.UnreadableImageError: <message>").
        marker = f"{type(self).__name__}: "
        lines = [line.split(marker, 1)[1] for line in str(message).splitlines() if marker in line]
        super().__init__(lines[-1] if lines else message)


def load_image(path: str) -> Any:
    """torchvision's image loader, with a failure that names the file and the two ways out."""
    from torchvision.datasets.folder import default_loader

    try:
        return default_loader(path)
    except (OSError, ValueError, SyntaxError) as err:  # PIL's UnidentifiedImageError is an OSError
        raise UnreadableImageError(
            f"image file {path!r} cannot be read ({type(err).__name__}: {err}); replace or delete it, or set "
            "data.skip_unreadable=true to leave unreadable files out") from None


def unreadable_images(paths: List[str]) -> List[str]:
    """The files among ``paths`` that PIL cannot decode (each image is decoded once)."""
    from PIL import Image

    bad = []
    for path in paths:
        try:
            with Image.open(path) as image:
                image.load()
        except Exception:  # noqa: BLE001 - whatever PIL raises, the file is unusable
            bad.append(path)
    return bad


class ImageFolderDataModule(SplitLoaders, L.LightningDataModule):
    """Class-per-folder image data (ImageNet layout).

    Args:
        data_dir: the root holding ``train_dir`` and ``val_dir`` (absolute sub-paths are used as given).
        num_classes: when given, must equal the number of class folders (a config check).
        num_train: when given, the size the config assumes for the training index space (CRD's
            memory bank); must be at least the number of training images.
        return_index: training samples become ``(x, y, index)``.
        skip_unreadable: decode every image once in ``setup`` and leave out the ones PIL cannot read, with
            one warning (their number and the first few names). When false (the default), an unreadable
            image stops the run when it is loaded, with an error naming the file.
    """

    def __init__(self, data_dir: str = "data/imagenet", train_dir: str = "train", val_dir: str = "val",
                 image_size: int = 224, batch_size: int = 256, num_workers: int = 8, pin_memory: bool = True,
                 persistent_workers: bool = True, num_classes: Optional[int] = None, return_index: bool = False,
                 num_train: Optional[int] = None, eval_batch_size: Optional[int] = None, download: bool = False,
                 skip_unreadable: bool = False):
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if download:
            raise ValueError("ImageFolderDataModule cannot download data; lay the images out under "
                             f"{data_dir}/{train_dir}/<class>/ and {data_dir}/{val_dir}/<class>/ and set download=false")
        self.data_dir = os.path.expanduser(str(data_dir))
        self.train_path = os.path.join(self.data_dir, train_dir)
        self.val_path = os.path.join(self.data_dir, val_dir)
        self.image_size = int(image_size)
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size or batch_size)
        self.num_workers = int(num_workers)
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers
        self.expected_classes = num_classes
        self.expected_train = num_train
        self.return_index = return_index
        self.skip_unreadable = bool(skip_unreadable)
        self.skipped: List[str] = []
        self.num_classes: Optional[int] = num_classes
        self.classes = None
        self.train_set: Optional[Dataset] = None
        self.val_set: Optional[Dataset] = None

    def train_transform(self):
        from torchvision import transforms as T

        return T.Compose([T.RandomResizedCrop(self.image_size), T.RandomHorizontalFlip(), T.ToTensor(),
                          T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])

    def eval_transform(self):
        from torchvision import transforms as T

        resize = int(round(self.image_size * 256 / 224))
        return T.Compose([T.Resize(resize), T.CenterCrop(self.image_size), T.ToTensor(),
                          T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])

    def _folder(self, path: str, transform):
        from torchvision.datasets import ImageFolder

        if not os.path.isdir(path):
            raise FileNotFoundError(
                f"image folder {path!r} does not exist; expected one sub-folder of images per class there. "
                "Set data.data_dir (or KD_DATA_DIR, data.train_dir, data.val_dir) to your copy of the data set")
        try:
            folder = ImageFolder(path, transform=transform, loader=load_image)
        except FileNotFoundError as err:  # no class folders or no images with a known extension
            raise FileNotFoundError(f"no usable images under {path!r}: {err}") from err
        if self.skip_unreadable:
            bad = set(unreadable_images([p for p, _ in folder.samples]))
            if bad:
                folder.samples = [s for s in folder.samples if s[0] not in bad]
                folder.imgs = folder.samples
                folder.targets = [t for _, t in folder.samples]
                self.skipped.extend(sorted(bad))
            if not folder.samples:
                raise FileNotFoundError(f"no readable images under {path!r}: all {len(bad)} files are unreadable")
        return folder

    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_set is not None:
            return
        train = self._folder(self.train_path, self.train_transform())
        val = self._folder(self.val_path, self.eval_transform())
        if self.skipped:
            first = ", ".join(self.skipped[:3]) + (", ..." if len(self.skipped) > 3 else "")
            log.warning("data.skip_unreadable: left out %d unreadable image file(s): %s", len(self.skipped), first)
        if train.classes != val.classes:
            only_train = sorted(set(train.classes) - set(val.classes))[:5]
            only_val = sorted(set(val.classes) - set(train.classes))[:5]
            raise ValueError(f"the class folders of {self.train_path!r} and {self.val_path!r} differ "
                             f"(only in train: {only_train}, only in val: {only_val})")
        found = len(train.classes)
        if self.expected_classes is not None and found != int(self.expected_classes):
            raise ValueError(f"{self.train_path!r} has {found} class folders but num_classes={self.expected_classes}; "
                             f"set data.num_classes={found}")
        if self.expected_train is not None and len(train) > int(self.expected_train):
            raise ValueError(f"{self.train_path!r} holds {len(train)} images but num_train={self.expected_train}; "
                             f"set data.num_train={len(train)}")
        self.num_classes = found
        self.classes = train.classes
        self.train_set = IndexedDataset(train) if self.return_index else train
        self.val_set = val

    @property
    def num_train(self) -> Optional[int]:
        return len(self.train_set) if self.train_set is not None else self.expected_train


    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()

