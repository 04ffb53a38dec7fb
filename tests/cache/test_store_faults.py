"""Faults injected into a stored teacher-output cache: each is detected when the cache is opened (naming
the file) and the cache is rebuilt, so training never reads silently wrong teacher targets."""
from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from kd_lightning.cache import TeacherOutputsError, TeacherOutputs

N, D, C = 64, 8, 10


def teacher() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(D, 16), nn.ReLU(), nn.Linear(16, C))


def data() -> TensorDataset:
    g = torch.Generator().manual_seed(1)
    return TensorDataset(torch.randn(N, D, generator=g), torch.randint(0, C, (N,), generator=g))


def build(tmp_path, **kw):
    t, ds = teacher(), data()
    cache = TeacherOutputs.get_or_build(t, ds, tmp_path, data_config={"n": N}, device="cpu", **kw)
    with torch.no_grad():
        expected = t.eval()(ds.tensors[0])
    return t, ds, cache, expected


def negate_in_place(path) -> None:
    """The reported fault: every logit negated, same size and same .npy header."""
    arr = np.load(path, mmap_mode="r+")
    arr[:] = -arr
    arr.flush()
    del arr


def flip_bit(path, offset_from_end: int = 5, bit: int = 7) -> None:
    raw = bytearray(path.read_bytes())
    raw[len(raw) - offset_from_end] ^= 1 << bit
    path.write_bytes(bytes(raw))


def truncate(path, nbytes: int = 8) -> None:
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) - nbytes])


FAULTS = {"negated": negate_in_place, "bit_flip": flip_bit, "truncated": truncate}


@pytest.mark.parametrize("fault", sorted(FAULTS))
@pytest.mark.parametrize("top_k", [None, 3])
def test_damaged_file_is_named_on_open_and_rebuilt(tmp_path, caplog, fault, top_k):
    t, ds, cache, expected = build(tmp_path, top_k=top_k)
    names = sorted(cache.meta["files"])
    for name in names:
        before = (cache.directory / name).read_bytes()
        FAULTS[fault](cache.directory / name)
        with pytest.raises(TeacherOutputsError, match=name):
            TeacherOutputs.open(cache.directory)
        with pytest.raises(TeacherOutputsError, match="checksum|truncated|damaged"):
            TeacherOutputs.get_or_build(t, ds, tmp_path, data_config={"n": N}, device="cpu",
                                            top_k=top_k, rebuild_damaged=False)
        with caplog.at_level(logging.WARNING, logger="kd_lightning.cache.store"):
            again = TeacherOutputs.get_or_build(t, ds, tmp_path, data_config={"n": N}, device="cpu", top_k=top_k)
        assert any("rebuilding damaged stored teacher outputs" in r.message and name in r.message for r in caplog.records)
        caplog.clear()
        assert again.directory == cache.directory
        assert (cache.directory / name).read_bytes() == before  # the rebuilt file is the original
        TeacherOutputs.open(cache.directory)  # and passes verification
    if top_k is None:
        assert torch.allclose(again.rows(np.arange(N)), expected, atol=1e-6)


def test_negated_logits_would_have_been_read_without_verification(tmp_path):
    """Why the check matters: the cheap checks (shape, dtype, size) cannot see the reported fault."""
    _, _, cache, expected = build(tmp_path)
    negate_in_place(cache.directory / "logits.npy")
    unchecked = TeacherOutputs.open(cache.directory, verify=False)
    assert torch.allclose(unchecked.rows(np.arange(N)), -expected, atol=1e-6)
    with pytest.raises(TeacherOutputsError, match="logits.npy.*fails its checksum"):
        TeacherOutputs.open(cache.directory)


@pytest.mark.parametrize("damage", ["garbage", "empty", "no_checksum", "deleted"])
def test_damaged_meta_json_is_rebuilt(tmp_path, damage):
    t, ds, cache, expected = build(tmp_path)
    meta_path = cache.directory / "meta.json"
    if damage == "garbage":
        meta_path.write_text("{not json")
    elif damage == "empty":
        meta_path.write_text("")
    elif damage == "deleted":
        meta_path.unlink()
    else:
        meta = json.loads(meta_path.read_text())
        del meta["files"]["logits.npy"]["sha256"]
        meta_path.write_text(json.dumps(meta))
        with pytest.raises(TeacherOutputsError, match="no checksum"):
            TeacherOutputs.open(cache.directory)
    again = TeacherOutputs.get_or_build(t, ds, tmp_path, data_config={"n": N}, device="cpu")
    assert torch.allclose(again.rows(np.arange(N)), expected, atol=1e-6)
    assert json.loads(meta_path.read_text())["files"]["logits.npy"]["sha256"]


def test_an_interrupted_rebuild_leaves_no_complete_looking_cache(tmp_path, monkeypatch):
    t, ds, cache, _ = build(tmp_path)
    negate_in_place(cache.directory / "logits.npy")

    def dies(*args, **kwargs):
        raise KeyboardInterrupt  # killed while the rebuilt files are being moved into place

    monkeypatch.setattr("kd_lightning.cache.store.os.replace", dies)
    with pytest.raises(KeyboardInterrupt):
        TeacherOutputs.get_or_build(t, ds, tmp_path, data_config={"n": N}, device="cpu")
    monkeypatch.undo()
    assert not (cache.directory / "meta.json").exists()  # so the next run rebuilds instead of trusting it
    assert not [p for p in cache.directory.iterdir() if p.name.endswith(".tmp")]
    TeacherOutputs.get_or_build(t, ds, tmp_path, data_config={"n": N}, device="cpu")
    TeacherOutputs.open(cache.directory)
