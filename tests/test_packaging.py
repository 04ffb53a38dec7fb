"""The wheel carries the package and the Hydra configs, so kd-train works outside a checkout."""
from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
                    str(ROOT)], check=True, capture_output=True, text=True)
    (whl,) = out.glob("kd_lightning-*.whl")
    return whl


@pytest.mark.slow
def test_wheel_holds_every_module_and_config_and_composes(wheel, tmp_path):
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        z.extractall(tmp_path)
    for module in (ROOT / "kd_lightning").rglob("*.py"):
        assert module.relative_to(ROOT).as_posix() in names, module
    for yaml in (ROOT / "conf").rglob("*.yaml"):
        assert f"kd_lightning/conf/{yaml.relative_to(ROOT / 'conf').as_posix()}" in names, yaml
    conf = tmp_path / "kd_lightning" / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = compose("train", overrides=["distill=dkd", "student=cnn1d_16"])
    assert cfg.distill.name == "dkd" and cfg.student.net.channels == 16
