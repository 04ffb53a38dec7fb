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


def _with_garbage(tmp_path):
    root = write_image_tree(tmp_path / "imgs")
    bad = root / "train" / "ant" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"this is not image data" * 4)  # a PNG signature, then garbage
    return root, bad


def test_an_unreadable_image_is_named_in_one_line(tmp_path):
    from kd_lightning.data.imagefolder import UnreadableImageError

    root, bad = _with_garbage(tmp_path)
    dm = folder_dm(root)
    dm.setup()
    with pytest.raises(UnreadableImageError) as info:
        for _ in dm.train_dataloader():
            pass
    message = str(info.value)
    assert str(bad) in message and "data.skip_unreadable=true" in message and "\n" not in message


def test_an_unreadable_image_from_a_worker_process_is_still_one_line(tmp_path):
    from kd_lightning.data.imagefolder import UnreadableImageError

    root, bad = _with_garbage(tmp_path)
    dm = ImageFolderDataModule(data_dir=str(root), batch_size=16, num_workers=1, image_size=8,
                               persistent_workers=False, pin_memory=False)
    dm.setup()
    with pytest.raises(UnreadableImageError) as info:
        next(iter(dm.train_dataloader()))
    assert str(bad) in str(info.value) and "\n" not in str(info.value)


def test_skip_unreadable_leaves_the_file_out_with_one_warning(tmp_path, caplog):
    root, bad = _with_garbage(tmp_path)
    truncated = root / "val" / "bee" / "cut.png"
    full = (root / "val" / "bee").iterdir().__next__().read_bytes()
    truncated.write_bytes(full[: len(full) // 2])
    dm = folder_dm(root, skip_unreadable=True)
    with caplog.at_level("WARNING", logger="kd_lightning.data.imagefolder"):
        dm.setup()
    warnings = [r.getMessage() for r in caplog.records if "skip_unreadable" in r.getMessage()]
    assert len(warnings) == 1 and "2 unreadable" in warnings[0]
    assert str(bad) in warnings[0] and str(truncated) in warnings[0]
    assert dm.num_train == 9 and len(dm.val_set) == 6  # what write_image_tree wrote, nothing more
    assert sum(len(y) for _, y in dm.train_dataloader()) == 9
    assert sum(len(y) for _, y in dm.val_dataloader()) == 6
