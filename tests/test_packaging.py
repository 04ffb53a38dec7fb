"""The wheel carries the package and the Hydra configs, so kd-train works outside a checkout."""
from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

import kd_lightning.app  # noqa: F401  registers the teacher=/student= model presets the compose below needs

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


@pytest.mark.slow
def test_a_plain_install_brings_what_the_lm_default_needs(wheel):
    """`pip install -e .` (no extra) must run `kd-train experiment=lm_pydoc`: the Hugging Face packages are
    unconditional requirements of the wheel, and no `lm` extra is left to forget."""
    with zipfile.ZipFile(wheel) as z:
        (meta,) = [n for n in z.namelist() if n.endswith(".dist-info/METADATA")]
        lines = z.read(meta).decode().splitlines()
    requires = [line.split(":", 1)[1].strip() for line in lines if line.startswith("Requires-Dist:")]
    unconditional = {r.split(">")[0].split("=")[0].split("<")[0].strip() for r in requires if ";" not in r}
    assert {"transformers", "tokenizers", "torch", "lightning"} <= unconditional, requires
    extras = {line.split(":", 1)[1].strip() for line in lines if line.startswith("Provides-Extra:")}
    assert "lm" not in extras and "dev" in extras, extras
