"""Shared test settings and the two fixtures every test file uses to build what it runs.

The suite runs on 2 CPU cores under pytest-xdist (two workers): each worker keeps to one intra-op
thread, since two OpenMP threads per worker would oversubscribe the cores and make tiny models'
steps many times slower. Subprocesses started by tests inherit the same limit.

``make_trainer``: a factory for a ``lightning.Trainer`` on the CPU with no logger, no checkpoints, no
progress bar, no model summary, no sanity validation and 4 steps, writing under the test's
``tmp_path``; every keyword overrides a default (``make_trainer(max_epochs=1, max_steps=-1)``).

``data`` and ``seeded``: the classifier tests' ``(x, y)`` of ``helpers.make_data()``, and the global torch
seed set to 0 (files that build random networks in every test mark themselves with
``pytestmark = pytest.mark.usefixtures("seeded")``).

``compose``: composes a config from ``conf/`` (``compose("distill=dkd", name="train", hydra=False)``)
with ``paths.output_dir`` = ``tmp_path/run`` and ``paths.cache_dir`` = ``tmp_path/cache``, so that a
run started from it writes nothing outside the test's own directory.
"""
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import lightning as L  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

TRAINER_DEFAULTS = dict(accelerator="cpu", devices=1, max_steps=4, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False, num_sanity_val_steps=0)


@pytest.fixture
def make_trainer(tmp_path):
    """``make_trainer(**overrides) -> L.Trainer`` with quiet CPU defaults (see the module docstring)."""

    def make(**overrides) -> L.Trainer:
        opts = {**TRAINER_DEFAULTS, "default_root_dir": str(tmp_path), **overrides}
        opts["callbacks"] = list(opts.get("callbacks") or [])
        return L.Trainer(**opts)

    return make


@pytest.fixture
def compose(tmp_path):
    """``compose(*overrides, name="train", hydra=False)``: a config from conf/ whose outputs go to tmp_path."""
    from helpers import compose_config

    return lambda *overrides, **kw: compose_config(tmp_path, *overrides, **kw)


@pytest.fixture
def data():
    """``(x, y)``: the small classification set of ``helpers.make_data()``."""
    from helpers import make_data

    return make_data()


@pytest.fixture
def seeded():
    """The global torch seed at 0, so networks a test builds are the same on every run."""
    torch.manual_seed(0)
