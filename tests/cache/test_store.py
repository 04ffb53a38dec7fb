"""kd_lightning/cache/store.py: TeacherOutputs round trips exactly, stores fp16 / top-k within bounded error,
refuses damaged caches and rebuilds unfinished ones, and serves rows for every index form."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from kd_lightning.cache import TeacherOutputsDataset, TeacherOutputsError, TeacherOutputs
from kd_lightning.losses import functional as KF

from .helpers import C, N, exact_logits, make_data, make_teacher



# --------------------------------------------------------------------------------------- round trip
def test_round_trip_equals_the_teachers_logits_for_shuffled_indices(tmp_path):
    x, y = make_data()
    teacher = make_teacher()
    ds = TensorDataset(x, y)
    cache = TeacherOutputs.get_or_build(teacher, ds, tmp_path, data_config={"n": N}, batch_size=7, device="cpu")
    assert teacher.training, "the teacher's mode is restored after caching"
    expected = exact_logits(teacher, x)
    assert len(cache) == N and cache.num_classes == C
    perm = torch.randperm(N)
    assert torch.allclose(cache.rows(perm), expected[perm], atol=1e-6)
    assert torch.allclose(cache.rows(5), expected[5], atol=1e-6)

    loader = DataLoader(TeacherOutputsDataset(ds, cache), batch_size=10, shuffle=True)
    seen = []
    for batch in loader:
        assert set(batch) == {"input", "target", "index", "teacher_logits"}
        assert torch.allclose(batch["teacher_logits"], expected[batch["index"]], atol=1e-6)
        assert torch.equal(batch["input"], x[batch["index"]]) and torch.equal(batch["target"], y[batch["index"]])
        seen.append(batch["index"])
    assert sorted(torch.cat(seen).tolist()) == list(range(N))

    # the second call opens the same cache instead of running the teacher again
    again = TeacherOutputs.get_or_build(teacher, ds, tmp_path, data_config={"n": N})
    assert again.directory == cache.directory
    meta = json.loads((cache.directory / "meta.json").read_text())
    assert meta["count"] == N and meta["files"]["logits.npy"]["shape"] == [N, C]


# ---------------------------------------------------------------------------------- fp16 and top-k
def test_fp16_storage_error_is_bounded(tmp_path):
    """fp16 rounding: |z16 - z| <= 2**-11 |z| (+ 2**-25 for subnormals)."""
    x, y = make_data()
    teacher = make_teacher(scale=8.0)
    cache = TeacherOutputs.get_or_build(teacher, TensorDataset(x, y), tmp_path, fp16=True, device="cpu")
    assert cache.meta["files"]["logits.npy"]["dtype"] == "float16"
    z = exact_logits(teacher, x)
    got = cache.rows(torch.arange(N))
    assert got.dtype == torch.float32
    assert ((got - z).abs() <= z.abs() * 2.0 ** -11 + 2.0 ** -25).all()
    # the KD loss they give differs by a tiny, bounded amount
    s = torch.randn(N, C)
    assert abs(float(KF.kd_loss(s, got, 4.0)) - float(KF.kd_loss(s, z, 4.0))) < 1e-3


def test_topk_cache_round_trip_and_kd_error_bound(tmp_path):
    x, y = make_data()
    teacher = make_teacher(scale=6.0)
    k = 3
    cache = TeacherOutputs.get_or_build(teacher, TensorDataset(x, y), tmp_path, top_k=k, device="cpu")
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
    cache = TeacherOutputs.get_or_build(teacher, TensorDataset(x, y), tmp_path, top_k=4, fp16=True, device="cpu")
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
    cache = TeacherOutputs.get_or_build(teacher, ds, tmp_path, data_config={"n": N}, device="cpu")
    return teacher, ds, cache


def test_truncated_cache_is_an_error(tmp_path):
    teacher, ds, cache = _built(tmp_path)
    path = cache.directory / "logits.npy"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 8])
    with pytest.raises(TeacherOutputsError, match="truncated|damaged"):
        TeacherOutputs.open(cache.directory)
    with pytest.raises(TeacherOutputsError, match="truncated|damaged"):
        TeacherOutputs.get_or_build(teacher, ds, tmp_path, data_config={"n": N}, rebuild_damaged=False)


def test_wrong_shape_key_count_and_checksum_are_errors(tmp_path):
    teacher, ds, cache = _built(tmp_path)
    meta_path = cache.directory / "meta.json"
    meta = json.loads(meta_path.read_text())
    with pytest.raises(TeacherOutputsError, match="made for key"):
        TeacherOutputs.open(cache.directory, key="somethingelse")
    with pytest.raises(TeacherOutputsError, match="rows but the dataset has"):
        TeacherOutputs.open(cache.directory, count=N + 1)
    with pytest.raises(TeacherOutputsError, match="dataset has"):
        TeacherOutputsDataset(TensorDataset(*make_data(N - 1)), cache)
    bad = json.loads(json.dumps(meta))
    bad["files"]["logits.npy"]["shape"] = [N, C + 1]
    meta_path.write_text(json.dumps(bad))
    with pytest.raises(TeacherOutputsError, match="meta.json says"):
        TeacherOutputs.open(cache.directory)
    meta_path.write_text(json.dumps(meta))
    # a flipped byte keeps shape and size: only the checksum sees it
    path = cache.directory / "logits.npy"
    raw = bytearray(path.read_bytes())
    raw[-3] ^= 0xFF
    path.write_bytes(bytes(raw))
    TeacherOutputs.open(cache.directory, verify=False)  # cheap checks pass
    with pytest.raises(TeacherOutputsError, match="checksum"):
        TeacherOutputs.open(cache.directory, verify=True)


def test_unfinished_cache_is_rebuilt_and_a_changed_teacher_never_reads_stale_rows(tmp_path):
    teacher, ds, cache = _built(tmp_path)
    (cache.directory / "meta.json").unlink()  # as if the writer died before finishing
    with pytest.raises(TeacherOutputsError, match="no stored teacher outputs"):
        TeacherOutputs.open(cache.directory)
    rebuilt = TeacherOutputs.get_or_build(teacher, ds, tmp_path, data_config={"n": N})
    assert rebuilt.directory == cache.directory and (cache.directory / "meta.json").exists()
    assert not list(cache.directory.glob("*.tmp"))
    changed = make_teacher(seed=5)
    other = TeacherOutputs.get_or_build(changed, ds, tmp_path, data_config={"n": N})
    assert other.directory != cache.directory
    assert torch.allclose(other.rows(torch.arange(N)), exact_logits(changed, ds.tensors[0]))


# -------------------------------------------------------------------------------------- cache rows
def test_cache_rows_accept_every_index_form_and_name_out_of_range_rows(tmp_path):
    teacher = nn.Linear(4, 3)
    x = torch.randn(10, 4)
    cache = TeacherOutputs.build(teacher, TensorDataset(x, torch.zeros(10, dtype=torch.long)), tmp_path,
                                     device="cpu")
    with torch.no_grad():
        want = teacher(x)
    assert torch.allclose(cache.rows([9, 0, -1]), want[[9, 0, 9]], atol=1e-6)
    assert torch.allclose(cache.rows(torch.tensor([3, 3], dtype=torch.int32)), want[[3, 3]], atol=1e-6)
    assert cache.rows(2).shape == (3,)
    rows = cache.rows(torch.arange(10))
    rows += 1  # the caller's copy: the cache itself is unchanged
    assert torch.allclose(cache.rows(torch.arange(10)), want, atol=1e-6)
    with pytest.raises(IndexError, match="out of range for stored teacher outputs of 10 rows"):
        cache.rows([10])


def test_concurrent_get_or_build_store_the_outputs_once(tmp_path):
    """Two builders sharing a directory: the second waits on the store's lock, then opens what the first
    wrote (the teacher runs over the data once)."""
    import threading
    import time

    class Slow(nn.Module):
        def __init__(self):
            super().__init__()
            self.net, self.calls = make_teacher(), 0

        def forward(self, x):
            self.calls += 1
            time.sleep(0.02)  # long enough for the other thread to reach the lock
            return self.net(x)

    teacher = Slow()
    x, y = make_data()
    dataset = TensorDataset(x, y)
    found = []
    threads = [threading.Thread(target=lambda: found.append(TeacherOutputs.get_or_build(
        teacher, dataset, tmp_path, batch_size=32, device="cpu"))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(found) == 2 and found[0].directory == found[1].directory
    assert teacher.calls == -(-len(dataset) // 32)  # one pass over the data, not two
    torch.testing.assert_close(found[1].rows(torch.arange(len(dataset))), exact_logits(teacher.net, x))
