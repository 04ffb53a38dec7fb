"""Shared by the app tests: short training budgets, the choices of a config group, and the console scripts."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from hydra import initialize_config_dir

from kd_lightning.app.confdir import CONFIG_DIR


# Tiny but real budgets: enough steps that every stage trains, validates and tests.
FAST = ["trainer.max_epochs=2", "teacher_fit.max_epochs=2", "+trainer.limit_train_batches=4", "+trainer.limit_val_batches=2",
        "trainer.accelerator=cpu", "trainer.enable_progress_bar=false", "trainer.num_sanity_val_steps=0",
        # the report's latency as a smoke test (timing each model properly is most of a tiny run)
        "latency.warmup=1", "latency.min_repeats=2", "latency.min_seconds=0"]


def cli(tool: str, *args: str, cwd: Path, env_extra=None, timeout=600) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).parent / tool
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", f"kd_lightning.app.{tool.split('-')[1]}"]
    env = {**os.environ, "KD_CACHE_DIR": str(cwd / "cache"), "KD_LOG_DIR": str(cwd / "outputs"),
           "PYTHONUNBUFFERED": "1", **(env_extra or {})}
    return subprocess.run(cmd + list(args), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def options(group: str):
    """The choices Hydra offers for ``group`` (files in conf/ and the registry's model presets)."""
    from hydra.core.global_hydra import GlobalHydra

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return sorted(GlobalHydra.instance().config_loader().get_group_options(group))
