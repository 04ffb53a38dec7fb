"""The teacher-output cache (offline KD): exact round trips, bounded fp16 / top-k errors, refusal of
damaged caches and random transforms, and a first training step equal to online KD."""
from __future__ import annotations

import functools
import json
import math
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset
from torch.utils.data.distributed import DistributedSampler

from kd_lightning import DistillationModule
from kd_lightning.cache import (
    CachedLogitsDataset,
    CachedTeacherDataModule,
    RandomTransformError,
    TeacherCacheError,
    TeacherOutputCache,
    cache_key,
    find_random_transforms,
    reconstruct_topk,
    topk_logprobs,
)
from kd_lightning.data.arrays import ArrayDataModule
from kd_lightning.losses import KD
from kd_lightning.losses import functional as KF

N, D, C = 96, 12, 10


def make_teacher(seed: int = 0, scale: float = 3.0) -> nn.Module:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(D, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, C))
    with torch.no_grad():
        net[-1].weight.mul_(scale)
    net.train()  # the cache must switch it to eval mode itself
    return net


def make_data(n: int = N, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, D, generator=g)
    y = torch.randint(0, C, (n,), generator=g)
    return x, y


def exact_logits(teacher: nn.Module, x: torch.Tensor) -> torch.Tensor:
    was = teacher.training
    teacher.eval()
    with torch.no_grad():
        out = teacher(x)
    teacher.train(was)
    return out


class Arrays(ArrayDataModule):
    def __init__(self, n: int = N, **kw):
        kw.setdefault("batch_size", 16)
        super().__init__(val_fraction=0.25, **kw)
        self.n = n

    def load_arrays(self):
        x, y = make_data(self.n)
        xt, yt = make_data(40, seed=2)
        y[:C] = torch.arange(C)
        return x.numpy(), y.numpy(), xt.numpy(), yt.numpy()


# --------------------------------------------------------------------------------------- round trip
def test_round_trip_equals_the_teachers_logits_for_shuffled_indices(tmp_path):
    x, y = make_data()
    teacher = make_teacher()
    ds = TensorDataset(x, y)
    cache = TeacherOutputCache.get_or_build(teacher, ds, tmp_path, data_config={"n": N}, batch_size=7, device="cpu")
    assert teacher.training, "the teacher's mode is restored after caching"
    expected = exact_logits(teacher, x)
    assert len(cache) == N and cache.num_classes == C
    perm = torch.randperm(N)
    assert torch.allclose(cache.rows(perm), expected[perm], atol=1e-6)
    assert torch.allclose(cache.rows(5), expected[5], atol=1e-6)

    loader = DataLoader(CachedLogitsDataset(ds, cache), batch_size=10, shuffle=True)
    seen = []
    for batch in loader:
        assert set(batch) == {"input", "target", "index", "teacher_logits"}
        assert torch.allclose(batch["teacher_logits"], expected[batch["index"]], atol=1e-6)
        assert torch.equal(batch["input"], x[batch["index"]]) and torch.equal(batch["target"], y[batch["index"]])
        seen.append(batch["index"])
    assert sorted(torch.cat(seen).tolist()) == list(range(N))

    # the second call opens the same cache instead of running the teacher again
    again = TeacherOutputCache.get_or_build(teacher, ds, tmp_path, data_config={"n": N})
    assert again.directory == cache.directory
    meta = json.loads((cache.directory / "meta.json").read_text())
    assert meta["count"] == N and meta["files"]["logits.npy"]["shape"] == [N, C]


def test_cache_key_tracks_teacher_weights_data_transform_and_options():
    x, y = make_data()
    ds = TensorDataset(x, y)
    t = make_teacher()
    base = cache_key(t, ds, {"a": 1})
    other_teacher = make_teacher()
    with torch.no_grad():
        other_teacher[0].weight[0, 0] += 1e-3
    assert cache_key(other_teacher, ds, {"a": 1}) != base
    assert cache_key(t, TensorDataset(x + 1e-3, y), {"a": 1}) != base
    assert cache_key(t, ds, {"a": 2}) != base
    assert cache_key(t, ds, {"a": 1}, transform="Normalize(mean=0.5)") != base
    assert cache_key(t, ds, {"a": 1}, fp16=True) != base
    assert cache_key(t, ds, {"a": 1}, top_k=3) != base
    assert cache_key(make_teacher(), ds, {"a": 1}) == base  # same weights, same key


def test_datamodule_serves_cached_rows_to_shuffled_and_distributed_loaders(tmp_path):
    dm = Arrays()
    teacher = make_teacher()
    cached = CachedTeacherDataModule(dm, teacher, tmp_path, data_config={"n": N}, device="cpu")
    cached.setup("fit")
    assert set(cached.caches) == {"train", "val", "test"}
    assert cached.num_classes == C  # attributes of the wrapped module pass through
    for split, (xs, ys) in {"train": (dm.x_train, dm.y_train), "val": (dm.x_val, dm.y_val),
                            "test": (dm.x_test, dm.y_test)}.items():
        expected = exact_logits(teacher, xs)
        loader = getattr(cached, f"{split}_dataloader")()
        for batch in loader:
            i = batch["index"]
            assert torch.equal(batch["input"], xs[i]) and torch.equal(batch["target"], ys[i])
            assert torch.allclose(batch["teacher_logits"], expected[i], atol=1e-6)
    # two DDP ranks: each reads the rows of exactly the samples its sampler gives it
    train = cached.train_dataloader()
    expected = exact_logits(teacher, dm.x_train)
    covered = []
    for rank in range(2):
        sampler = DistributedSampler(train.dataset, num_replicas=2, rank=rank, shuffle=True, seed=3)
        loader = DataLoader(train.dataset, batch_size=8, sampler=sampler, collate_fn=train.collate_fn)
        for batch in loader:
            assert torch.allclose(batch["teacher_logits"], expected[batch["index"]], atol=1e-6)
            assert torch.equal(batch["input"], dm.x_train[batch["index"]])
            covered += batch["index"].tolist()
    assert sorted(covered) == list(range(len(dm.y_train)))


# ---------------------------------------------------------------------------------- fp16 and top-k
def test_fp16_storage_error_is_bounded(tmp_path):
    """fp16 rounding: |z16 - z| <= 2**-11 |z| (+ 2**-25 for subnormals)."""
    x, y = make_data()
    teacher = make_teacher(scale=8.0)
    cache = TeacherOutputCache.get_or_build(teacher, TensorDataset(x, y), tmp_path, fp16=True, device="cpu")
    assert cache.meta["files"]["logits.npy"]["dtype"] == "float16"
    z = exact_logits(teacher, x)
    got = cache.rows(torch.arange(N))
    assert got.dtype == torch.float32
    assert ((got - z).abs() <= z.abs() * 2.0 ** -11 + 2.0 ** -25).all()
    # the KD loss they give differs by a tiny, bounded amount
    s = torch.randn(N, C)
    assert abs(float(KF.kd_loss(s, got, 4.0)) - float(KF.kd_loss(s, z, 4.0))) < 1e-3


@pytest.mark.parametrize("k", [1, 3, 9, 10])
def test_topk_reconstruction_keeps_topk_probabilities_exactly(k):
    torch.manual_seed(k)
    z = torch.randn(64, C) * 3
    lp, ix = topk_logprobs(z, k)
    rec = reconstruct_topk(lp, ix, C)
    p, q = F.softmax(z, -1), F.softmax(rec, -1)
    # softmax at T=1: the top-k probabilities are the teacher's ...
    assert torch.allclose(q.gather(1, ix), p.gather(1, ix), atol=1e-6)
    assert torch.allclose(q.sum(-1), torch.ones(64), atol=1e-6)
    # ... the other classes share the rest equally ...
    rest = 1 - p.gather(1, ix).sum(-1)
    mask = torch.ones_like(p, dtype=torch.bool).scatter_(1, ix, False)
    if k < C:
        others = q[mask].view(64, C - k)
        assert torch.allclose(others, (rest / (C - k))[:, None].expand_as(others), atol=1e-6)
    # ... so the total-variation distance to the teacher is at most the tail mass (0 for k = C)
    tv = 0.5 * (p - q).abs().sum(-1)
    assert (tv <= rest.clamp_min(0) + 1e-6).all()
    if k == C:
        assert torch.allclose(q, p, atol=1e-6)


def test_topk_cache_round_trip_and_kd_error_bound(tmp_path):
    x, y = make_data()
    teacher = make_teacher(scale=6.0)
    k = 3
    cache = TeacherOutputCache.get_or_build(teacher, TensorDataset(x, y), tmp_path, top_k=k, device="cpu")
    assert set(cache.meta["files"]) == {"topk_logprobs.npy", "topk_indices.npy"}
    z = exact_logits(teacher, x)
    rec = cache.rows(torch.arange(N))
    p, q = F.softmax(z, -1), F.softmax(rec, -1)
    top = p.topk(k, -1).indices
    assert torch.allclose(q.gather(1, top), p.gather(1, top), atol=1e-6)
    # At T=1 the KD target moves by at most the tail mass in total variation, and
    # |KL(q||s) - KL(p||s)| <= 2 TV * max|log s| bounds the change of the loss.
    s = torch.randn(N, C)
    log_s = F.log_softmax(s, -1)
    tail = (1 - p.gather(1, top).sum(-1))
    bound = float((2 * tail * log_s.abs().max(-1).values).mean())
    diff = abs(float(KF.kd_loss(s, rec, 1.0)) - float(KF.kd_loss(s, z, 1.0)))
    assert diff <= bound + 1e-6


def test_topk_fp16_storage(tmp_path):
    x, y = make_data()
    teacher = make_teacher()
    cache = TeacherOutputCache.get_or_build(teacher, TensorDataset(x, y), tmp_path, top_k=4, fp16=True, device="cpu")
    assert cache.meta["files"]["topk_logprobs.npy"]["dtype"] == "float16"
    z = exact_logits(teacher, x)
    p, q = F.softmax(z, -1), F.softmax(cache.rows(np.arange(N)), -1)
    top = p.topk(4, -1).indices
    # log-probabilities rounded to fp16: relative probability error <= exp(2**-11 |log p|) - 1
    lp = torch.log(p.gather(1, top))
    bound = p.gather(1, top) * (torch.exp(lp.abs() * 2.0 ** -11) - 1) + 1e-6
    assert ((q.gather(1, top) - p.gather(1, top)).abs() <= bound * 1.01 + 1e-6).all()


# ------------------------------------------------------------------------------ refusing bad caches
def _built(tmp_path):
    x, y = make_data()
    teacher = make_teacher()
    ds = TensorDataset(x, y)
    cache = TeacherOutputCache.get_or_build(teacher, ds, tmp_path, data_config={"n": N}, device="cpu")
    return teacher, ds, cache


def test_truncated_cache_is_an_error(tmp_path):
    teacher, ds, cache = _built(tmp_path)
    path = cache.directory / "logits.npy"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 8])
    with pytest.raises(TeacherCacheError, match="truncated|damaged"):
        TeacherOutputCache.open(cache.directory)
    with pytest.raises(TeacherCacheError, match="truncated|damaged"):
        TeacherOutputCache.get_or_build(teacher, ds, tmp_path, data_config={"n": N}, rebuild_damaged=False)


def test_wrong_shape_key_count_and_checksum_are_errors(tmp_path):
    teacher, ds, cache = _built(tmp_path)
    meta_path = cache.directory / "meta.json"
    meta = json.loads(meta_path.read_text())
    with pytest.raises(TeacherCacheError, match="made for key"):
        TeacherOutputCache.open(cache.directory, key="somethingelse")
    with pytest.raises(TeacherCacheError, match="rows but the dataset has"):
        TeacherOutputCache.open(cache.directory, count=N + 1)
    with pytest.raises(TeacherCacheError, match="dataset has"):
        CachedLogitsDataset(TensorDataset(*make_data(N - 1)), cache)
    bad = json.loads(json.dumps(meta))
    bad["files"]["logits.npy"]["shape"] = [N, C + 1]
    meta_path.write_text(json.dumps(bad))
    with pytest.raises(TeacherCacheError, match="meta.json says"):
        TeacherOutputCache.open(cache.directory)
    meta_path.write_text(json.dumps(meta))
    # a flipped byte keeps shape and size: only the checksum sees it
    path = cache.directory / "logits.npy"
    raw = bytearray(path.read_bytes())
    raw[-3] ^= 0xFF
    path.write_bytes(bytes(raw))
    TeacherOutputCache.open(cache.directory, verify=False)  # cheap checks pass
    with pytest.raises(TeacherCacheError, match="checksum"):
        TeacherOutputCache.open(cache.directory, verify=True)


def test_unfinished_cache_is_rebuilt_and_a_changed_teacher_never_reads_stale_rows(tmp_path):
    teacher, ds, cache = _built(tmp_path)
    (cache.directory / "meta.json").unlink()  # as if the writer died before finishing
    with pytest.raises(TeacherCacheError, match="no teacher cache"):
        TeacherOutputCache.open(cache.directory)
    rebuilt = TeacherOutputCache.get_or_build(teacher, ds, tmp_path, data_config={"n": N})
    assert rebuilt.directory == cache.directory and (cache.directory / "meta.json").exists()
    assert not list(cache.directory.glob("*.tmp"))
    changed = make_teacher(seed=5)
    other = TeacherOutputCache.get_or_build(changed, ds, tmp_path, data_config={"n": N})
    assert other.directory != cache.directory
    assert torch.allclose(other.rows(torch.arange(N)), exact_logits(changed, ds.tensors[0]))


# ---------------------------------------------------------------------------------- random transforms
class ImageLike(Dataset):
    def __init__(self, transform):
        self.transform = transform
        self.x = torch.rand(12, 3, 8, 8)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.transform(self.x[i]), i % C


def test_random_transform_is_refused_unless_allowed(tmp_path):
    T = pytest.importorskip("torchvision.transforms")
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, C))
    random = T.Compose([T.RandomCrop(8, padding=1), T.RandomHorizontalFlip(), T.Normalize([0.5] * 3, [0.2] * 3)])
    assert find_random_transforms(random) == ["RandomCrop", "RandomHorizontalFlip"]
    with pytest.raises(RandomTransformError, match=r"RandomCrop.*would not match the augmented view"):
        TeacherOutputCache.get_or_build(teacher, ImageLike(random), tmp_path)
    assert not list(Path(tmp_path).iterdir()), "nothing is written for a refused cache"
    allowed = TeacherOutputCache.get_or_build(teacher, ImageLike(random), tmp_path, allow_random_transform=True,
                                              device="cpu")
    assert len(allowed) == 12
    # deterministic transforms are fine, and part of the key
    fixed_a = TeacherOutputCache.get_or_build(teacher, ImageLike(T.Normalize([0.5] * 3, [0.2] * 3)), tmp_path)
    fixed_b = TeacherOutputCache.get_or_build(teacher, ImageLike(T.Normalize([0.4] * 3, [0.2] * 3)), tmp_path)
    assert fixed_a.directory != fixed_b.directory
    # wrappers (Subset, index-adding datasets) are looked through
    from torch.utils.data import Subset

    with pytest.raises(RandomTransformError, match="RandomCrop"):
        TeacherOutputCache.get_or_build(teacher, Subset(ImageLike(random), [0, 2, 4]), tmp_path)
    # RandomApply / RandomChoice hide their members one level down
    assert "ColorJitter" in find_random_transforms(T.Compose([T.RandomApply([T.ColorJitter(0.4)], p=0.8)]))


def test_random_transform_refused_by_the_datamodule_wrapper(tmp_path):
    T = pytest.importorskip("torchvision.transforms")

    class DM(L.LightningDataModule):
        def train_dataloader(self):
            return DataLoader(ImageLike(T.RandomHorizontalFlip()), batch_size=4, shuffle=True)

    teacher = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, C))
    with pytest.raises(RandomTransformError, match="RandomHorizontalFlip"):
        CachedTeacherDataModule(DM(), teacher, tmp_path, splits=("train",)).prepare_caches()


# ------------------------------------------------------------------------------ training on a cache
class FirstSteps(L.Callback):
    def __init__(self):
        self.losses, self.inputs = [], []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))
        self.inputs.append(batch["input"] if isinstance(batch, dict) else batch[0])


def _fit(tmp_path, module, dm, steps=3):
    rec = FirstSteps()
    L.seed_everything(7)
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=steps, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False, num_sanity_val_steps=0,
                        limit_val_batches=0, default_root_dir=str(tmp_path), callbacks=[rec])
    trainer.fit(module, datamodule=dm)
    return rec


def test_fit_on_cached_logits_matches_online_kd_on_the_first_step(tmp_path):
    teacher = make_teacher()
    teacher.eval()
    torch.manual_seed(3)
    student = nn.Sequential(nn.Linear(D, 16), nn.ReLU(), nn.Linear(16, C))
    init = {k: v.clone() for k, v in student.state_dict().items()}
    opt = functools.partial(torch.optim.SGD, lr=0.1)

    online = DistillationModule(student, teacher, loss=KD(temperature=4.0), optimizer=opt)
    rec_online = _fit(tmp_path / "a", online, Arrays())

    student.load_state_dict(init)
    cached_dm = CachedTeacherDataModule(Arrays(), teacher, tmp_path / "cache", device="cpu")
    offline = DistillationModule(student, None, loss=KD(temperature=4.0), optimizer=opt)
    assert offline.teacher is None
    rec_cached = _fit(tmp_path / "b", offline, cached_dm)

    assert torch.equal(rec_online.inputs[0], rec_cached.inputs[0]), "both fits must see the same first batch"
    assert rec_cached.losses[0] == pytest.approx(rec_online.losses[0], rel=1e-6, abs=1e-7)
    assert rec_cached.losses == pytest.approx(rec_online.losses, rel=1e-4)
    # evaluation measures the cached teacher too
    res = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False).test(offline, datamodule=cached_dm,
                                                                                   verbose=False)[0]
    assert 0.0 <= res["test/teacher_acc"] <= 1.0 and "test/agreement" in res


def test_cached_batches_and_batch_transform_do_not_mix(tmp_path):
    from kd_lightning.augment import Mixup

    cached_dm = CachedTeacherDataModule(Arrays(), make_teacher(), tmp_path, device="cpu")
    module = DistillationModule(nn.Linear(D, C), None, loss=KD(), batch_transform=Mixup())
    with pytest.raises(ValueError, match="live teacher"):
        _fit(tmp_path / "fit", module, cached_dm, steps=1)


def test_app_teacher_cache_rejects_feature_objectives_and_topk_logit_mse(tmp_path):
    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict

    from kd_lightning.app.confdir import CONFIG_DIR
    from kd_lightning.app.build import build_loss
    from kd_lightning.app.errors import ConfigError
    from kd_lightning.app.pipeline import teacher_cache_datamodule

    def cfg_for(*overrides):
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = compose("train", overrides=list(overrides))
        with open_dict(cfg):
            cfg.paths.cache_dir = str(tmp_path)
        return cfg

    off = cfg_for()
    assert off.distill.teacher_cache is False
    assert teacher_cache_datamodule(off, make_teacher(), build_loss(off.distill), Arrays()) is None
    fit = cfg_for("distill=fitnet", "distill.teacher_cache=true")
    with pytest.raises(ConfigError, match="teacher features"):
        teacher_cache_datamodule(fit, make_teacher(), build_loss(fit.distill), Arrays())
    mse = cfg_for("distill=logit_mse", "distill.teacher_cache=true", "distill.teacher_cache_top_k=3")
    with pytest.raises(ConfigError, match="raw teacher logits"):
        teacher_cache_datamodule(mse, make_teacher(), build_loss(mse.distill), Arrays())
    kd = cfg_for("distill.teacher_cache=true")
    dm = teacher_cache_datamodule(kd, make_teacher(), build_loss(kd.distill), Arrays())
    assert isinstance(dm, CachedTeacherDataModule)
    assert all(str(c.directory).startswith(str(tmp_path / "teacher_outputs")) for c in dm.caches.values())
