"""kd_lightning/data/imagefolder.py: ImageFolderDataModule on a generated folder of PNGs."""
import pytest

from kd_lightning.data.imagefolder import ImageFolderDataModule

from .helpers import write_image_tree


def folder_dm(root, **kw):
    kw.setdefault("image_size", 32)
    return ImageFolderDataModule(data_dir=str(root), batch_size=4, num_workers=0, **kw)


def test_image_folder_train_and_val(tmp_path):
    root = write_image_tree(tmp_path / "imgs")
    dm = folder_dm(root, num_classes=3, return_index=True)
    dm.setup()
    assert dm.num_classes == 3 and dm.classes == ["ant", "bee", "cat"] and dm.num_train == 9
    x, y, index = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 3, 32, 32) and y.shape == index.shape == (4,)
    xv, yv = next(iter(dm.val_dataloader()))
    assert xv.shape == (4, 3, 32, 32)
    assert len(dm.test_dataloader().dataset) == 6


def test_image_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        folder_dm(tmp_path / "missing").setup()
    root = write_image_tree(tmp_path / "imgs")
    with pytest.raises(ValueError, match="num_classes=1000"):
        folder_dm(root, num_classes=1000).setup()
    with pytest.raises(ValueError, match="num_train"):
        folder_dm(root, num_train=5).setup()
    (root / "val" / "dog").mkdir()
    from PIL import Image

    Image.new("RGB", (8, 8)).save(root / "val" / "dog" / "0.png")
    with pytest.raises(ValueError, match="differ"):
        folder_dm(root).setup()
