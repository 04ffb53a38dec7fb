"""kd-train distill=reviewkd|ft|ab|fsp|ickd with no extra flags: on the default MNIST-1D pair (cnn1d_128 -> cnn1d_16)
and on pair=resnet32x4_resnet8x4 data=cifar100 with a tiny CIFAR-100 written in the real format, every stage shrunk
by debug=limit (the teacher is trained once per pair and reused from the shared cache)."""
from __future__ import annotations

import json
import math
import os

import pytest
from omegaconf import open_dict

METHODS = ["reviewkd", "ft", "ab", "fsp", "ickd"]
# What each method logs beside the KD terms (FT's first stage logs the paraphraser's reconstruction).
TERMS = {"reviewkd": "reviewkd", "ft": "ft_reconstruction", "ab": "ab", "fsp": "fsp", "ickd": "ickd"}
SHRINK = ["debug=limit", "teacher_fit.max_epochs=2", "teacher_fit.use_store=true", "trainer=cpu",
          "trainer.precision=32-true", "trainer.enable_progress_bar=false",
          "trainer.num_sanity_val_steps=0", "logger=csv", "callbacks=none"]


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory):
    # One data cache for the module's runs: MNIST-1D is generated once.
    return tmp_path_factory.mktemp("cache")


def run_method(compose, tmp_path, cache, *overrides):
    from kd_lightning.app.pipeline import run

    cfg = compose(*overrides, *SHRINK)
    with open_dict(cfg):
        cfg.paths.cache_dir = str(cache)
    summary = run(cfg)
    return cfg, summary


def logged_terms(run_dir):
    """The validation terms of the student stage's CSV log (name without "val/" -> last value)."""
    import csv

    with open(run_dir / "csv" / "student" / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    return {k[4:]: float(v) for row in rows for k, v in row.items() if v not in ("", None) and k.startswith("val/")}


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_runs_on_the_default_mnist1d_pair(compose, tmp_path, shared_cache, method):
    cfg, summary = run_method(compose, tmp_path, shared_cache, f"distill={method}")
    assert cfg.teacher.net.model_name == "cnn1d_128" and cfg.student.net.model_name == "cnn1d_16"
    assert summary["distill"]["name"] == method
    # the adapters train with the student but are not part of it
    assert summary["student"]["params"] == summary["baseline"]["params"]
    terms = logged_terms(tmp_path / "run")
    assert TERMS[method] in terms and all(map(math.isfinite, terms.values())), terms
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["distill"]["name"] == method


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_runs_on_resnet32x4_resnet8x4_with_a_tiny_cifar100(compose, tmp_path, shared_cache, monkeypatch, method):
    import torchvision.datasets.cifar as tv_cifar

    from data.helpers import write_cifar100

    monkeypatch.setattr(tv_cifar, "check_integrity", lambda fpath, md5=None: os.path.isfile(fpath))
    data_dir = write_cifar100(tmp_path / "data", n_train=24, n_test=8)
    cfg, summary = run_method(compose, tmp_path, shared_cache, "pair=resnet32x4_resnet8x4", "data=cifar100",
                              f"distill={method}", f"paths.data_dir={data_dir}", "data.batch_size=8",
                              "data.num_workers=0")
    assert (cfg.teacher.net.model_name, cfg.student.net.model_name) == ("resnet32x4", "resnet8x4")
    assert summary["distill"]["name"] == method and summary["student"]["params"] == summary["baseline"]["params"]
    terms = logged_terms(tmp_path / "run")
    assert TERMS[method] in terms and all(map(math.isfinite, terms.values())), terms
