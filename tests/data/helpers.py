"""Tiny data sets written in the real on-disk formats (torchvision's CIFAR pickles, folders of PNGs)."""
import pickle

import numpy as np

N_TRAIN, N_TEST = 40, 12


def _write(path, obj):
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def _images(rng, n):
    return rng.integers(0, 256, size=(n, 3 * 32 * 32), dtype=np.uint8)  # row-major CHW, as in the originals


def write_cifar100(root, n_train=N_TRAIN, n_test=N_TEST, classes=100):
    rng = np.random.default_rng(0)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    for split, n in (("train", n_train), ("test", n_test)):
        fine = [int(v) for v in rng.integers(0, classes, size=n)]
        _write(folder / split, {"filenames": [f"img{i}.png" for i in range(n)], "batch_label": split,
                                "fine_labels": fine, "coarse_labels": [v // 5 for v in fine], "data": _images(rng, n)})
    _write(folder / "meta", {"fine_label_names": [f"class{i}" for i in range(classes)],
                             "coarse_label_names": [f"super{i}" for i in range(20)]})
    return root


def write_cifar10(root, per_batch=8, n_test=N_TEST):
    rng = np.random.default_rng(1)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        n = n_test if name == "test_batch" else per_batch
        _write(folder / name, {"batch_label": name, "labels": [int(v) for v in rng.integers(0, 10, size=n)],
                               "data": _images(rng, n), "filenames": [f"{name}_{i}.png" for i in range(n)]})
    _write(folder / "batches.meta", {"label_names": [f"c{i}" for i in range(10)], "num_cases_per_batch": per_batch,
                                     "num_vis": 3072})
    return root


# ------------------------------------------------------------------------------------ image folders
def write_image_tree(root, classes=("ant", "bee", "cat"), n_train=3, n_val=2, size=(40, 30)):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("val", n_val)):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / c / f"{i}.png")
    return root
