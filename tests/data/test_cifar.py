"""kd_lightning/data/cifar.py: CIFARDataModule on tiny data sets written in the real torchvision on-disk format.
Nothing is downloaded."""
import os
import pickle

import pytest
import torch

from kd_lightning.data.cifar import CIFARDataModule

from .helpers import N_TEST, N_TRAIN, write_cifar10, write_cifar100


@pytest.fixture
def no_checksums(monkeypatch):
    """Our tiny files cannot match the published MD5 sums: check presence only."""
    import torchvision.datasets.cifar as tv_cifar

    monkeypatch.setattr(tv_cifar, "check_integrity", lambda fpath, md5=None: os.path.isfile(fpath))


@pytest.fixture
def cifar100_dir(tmp_path, no_checksums):
    return write_cifar100(tmp_path / "data")


def small_dm(data_dir, **kw):
    kw.setdefault("batch_size", 8)
    return CIFARDataModule(data_dir=str(data_dir), num_workers=0, **kw)


def test_cifar100_loads_the_real_format(cifar100_dir):
    dm = small_dm(cifar100_dir, name="cifar100", num_classes=100)
    dm.setup("fit")
    assert dm.num_classes == 100 and dm.num_train == N_TRAIN
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (8, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert -3 < x.mean() < 3 and x.min() < -1  # normalized, not raw [0, 1]
    assert len(dm.val_dataloader().dataset) == N_TEST  # validation = the test split by default
    assert len(dm.test_dataloader().dataset) == N_TEST


def test_eval_images_are_deterministic_and_training_images_augmented(cifar100_dir):
    dm = small_dm(cifar100_dir)
    dm.setup()
    test = dm.test_set
    assert torch.equal(test[0][0], test[0][0])
    train = dm.train_set
    torch.manual_seed(0)
    views = [train[3][0] for _ in range(6)]
    assert any(not torch.equal(views[0], v) for v in views[1:])  # random crop / flip


def test_val_split_holds_out_unaugmented_training_images(cifar100_dir):
    dm = small_dm(cifar100_dir, val_split=10, seed=3)
    dm.setup()
    assert len(dm.train_set) == N_TRAIN - 10 and len(dm.val_set) == 10
    assert set(dm.train_set.indices).isdisjoint(dm.val_set.indices)
    assert torch.equal(dm.val_set[0][0], dm.val_set[0][0])
    again = small_dm(cifar100_dir, val_split=10, seed=3)
    again.setup()
    assert again.val_set.indices == dm.val_set.indices  # the split depends on the seed only
    frac = small_dm(cifar100_dir, val_split=0.25)
    frac.setup()
    assert len(frac.val_set) == 10


def test_return_index_gives_positions_in_the_full_training_split(cifar100_dir):
    dm = small_dm(cifar100_dir, val_split=5, return_index=True, batch_size=N_TRAIN)
    dm.setup()
    x, y, index = next(iter(dm.train_dataloader()))
    assert x.shape[0] == N_TRAIN - 5 and index.shape == y.shape
    with open(cifar100_dir / "cifar-100-python" / "train", "rb") as f:
        labels = torch.tensor(pickle.load(f, encoding="latin1")["fine_labels"])
    assert torch.equal(labels[index], y)
    assert len(next(iter(dm.val_dataloader()))) == 2  # evaluation batches stay (x, y)


def test_missing_data_names_the_directory_and_the_fix(tmp_path):
    dm = small_dm(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError) as err:
        dm.setup()
    assert str(tmp_path / "nowhere") in str(err.value) and "data.download=true" in str(err.value)


def test_num_classes_must_match_the_data_set():
    with pytest.raises(ValueError, match="100 classes"):
        CIFARDataModule(name="cifar100", num_classes=10)
    with pytest.raises(ValueError, match="cifar10"):
        CIFARDataModule(name="imagenet")
    with pytest.raises(ValueError, match="num_train"):
        CIFARDataModule(name="cifar10", num_train=1000)


def test_meta_file_with_the_wrong_class_count_is_rejected(tmp_path, no_checksums):
    root = write_cifar100(tmp_path, classes=20)
    with pytest.raises(ValueError, match="20 classes"):
        small_dm(root).setup()


def test_cifar10_layout(tmp_path, no_checksums):
    root = write_cifar10(tmp_path)
    dm = small_dm(root, name="cifar10", num_classes=10, pin_memory=True, persistent_workers=True)
    dm.setup()
    assert dm.num_train == 40
    loader = dm.train_dataloader()
    assert not loader.persistent_workers  # no workers, so no persistent ones
    x, y = next(iter(loader))
    assert x.shape == (8, 3, 32, 32) and int(y.max()) < 10


def test_cifar_config_instantiates(cifar100_dir):
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(os.path.join(os.path.dirname(__file__), "..", "..", "conf", "data", "cifar100.yaml"))
    cfg.data_dir, cfg.seed, cfg.num_workers = str(cifar100_dir), 0, 0
    dm = instantiate(cfg)
    assert isinstance(dm, CIFARDataModule) and dm.num_classes == 100
    dm.setup()
    assert len(next(iter(dm.train_dataloader()))) == 2


