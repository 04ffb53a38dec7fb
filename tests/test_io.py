"""kd_lightning.io: atomic writes keep the user's umask and never leave a partial file."""
from __future__ import annotations

import json
import os
import stat

import pytest

from kd_lightning import io


@pytest.fixture
def umask():
    """Set a umask for one test and restore the previous one after it."""
    previous = os.umask(0o022)
    os.umask(previous)

    def set_(mask: int) -> None:
        os.umask(mask)

    yield set_
    os.umask(previous)


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o077, 0o002])
def test_written_files_keep_the_umask(tmp_path, umask, mask):
    umask(mask)
    writers = {
        "a.txt": lambda p: io.write_text(p, "x"),
        "b.json": lambda p: io.write_json(p, {"a": 1}),
        "c.pt": lambda p: io.torch_save({"a": 1}, p),
        "d.bin": lambda p: io.copy_file(tmp_path / "a.txt", p),
    }
    for name, write in writers.items():
        write(tmp_path / name)
        mode = stat.S_IMODE((tmp_path / name).stat().st_mode)
        assert mode == 0o666 & ~mask, (name, oct(mode))
    # The same mode as a plain open() under that umask.
    with open(tmp_path / "plain", "w"):
        pass
    assert stat.S_IMODE((tmp_path / "plain").stat().st_mode) == 0o666 & ~mask


def test_a_failing_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "summary.json"
    io.write_json(target, {"ok": 1})
    with pytest.raises(RuntimeError):
        with io.atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed mid-write")
    assert json.loads(target.read_text()) == {"ok": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]


def test_temporary_names_are_unique_and_hidden(tmp_path):
    names = {io.temp_path_beside(tmp_path / "x").name for _ in range(50)}
    assert len(names) == 50 and all(n.startswith(".x.") and n.endswith(".tmp") for n in names)


def test_file_sha256_matches_hashlib(tmp_path):
    import hashlib

    data = os.urandom(9 << 20)
    (tmp_path / "f").write_bytes(data)
    assert io.file_sha256(tmp_path / "f") == hashlib.sha256(data).hexdigest()
