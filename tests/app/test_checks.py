"""Renamed config keys: an old key, on the command line or in a config, gets one line naming its new key
before anything runs."""
from __future__ import annotations

import re

import pytest
from helpers import compose_config

from kd_lightning.app.checks import RENAMED_KEYS, check_renamed_keys, renamed_key_in
from kd_lightning.app.errors import ConfigError

from .helpers import cli


@pytest.mark.parametrize("old", sorted(RENAMED_KEYS))
@pytest.mark.parametrize("prefix", ["", "+", "++"])
def test_an_old_key_on_the_command_line_names_its_new_key(old, prefix):
    message = renamed_key_in(["experiment=mnist1d_kd", f"{prefix}{old}=true"])
    new = RENAMED_KEYS[old]
    what = "the store of trained teachers" if old.startswith("teacher_fit.") else "stored teacher outputs"
    assert message == f"{old} was renamed {new} ({what}); write {new}=true instead"
    assert "\n" not in message


def test_the_new_keys_and_other_overrides_pass():
    assert renamed_key_in([f"{new}=true" for new in RENAMED_KEYS.values()]) is None
    assert renamed_key_in(["-m", "distill=kd,dkd", "trainer.max_epochs=2", "hydra.run.dir=x"]) is None
    assert all(old.split(".", 1)[0] in ("distill", "teacher_fit") for old in RENAMED_KEYS)
    assert len(set(RENAMED_KEYS.values())) == len(RENAMED_KEYS)
    assert not any("cache" in new for new in RENAMED_KEYS.values())


def test_an_old_key_in_a_config_stops_the_run_before_any_stage(tmp_path):
    from kd_lightning.app.pipeline import run

    cfg = compose_config(tmp_path, "experiment=mnist1d_kd", "+distill.teacher_cache=true")
    with pytest.raises(ConfigError, match=r"^distill.teacher_cache was renamed distill.teacher_outputs "):
        check_renamed_keys(cfg)
    with pytest.raises(ConfigError, match="renamed distill.teacher_outputs"):
        run(cfg)
    assert not (tmp_path / "run").exists()
    check_renamed_keys(compose_config(tmp_path, "experiment=mnist1d_kd", "distill.teacher_outputs=true"))


@pytest.mark.slow
@pytest.mark.parametrize("tool,old,new", [("kd-train", "distill.teacher_cache=true", "distill.teacher_outputs=true"),
                                          ("kd-train", "teacher_fit.use_cache=false", "teacher_fit.use_store=false"),
                                          ("kd-eval", "+distill.teacher_cache_top_k=5", "distill.teacher_outputs_top_k=5")])
def test_the_console_scripts_answer_an_old_key_with_one_line(tmp_path, tool, old, new):
    proc = cli(tool, old, cwd=tmp_path, timeout=120)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    (line,) = [x for x in proc.stderr.splitlines() if x.strip()]
    assert line.startswith(f"{tool}: error: {old.lstrip('+').split('=')[0]} was renamed") and line.endswith(
        f"write {new} instead")
    assert not (tmp_path / "outputs").exists()  # nothing ran


def test_the_latency_settings_default_shrink_under_debug_and_refuse_bad_values(tmp_path):
    from kd_lightning.app.checks import latency_timing

    full = compose_config(tmp_path, "latency.warmup=10", "latency.min_repeats=30", "latency.min_seconds=0.5")
    assert latency_timing(full) == {"warmup": 10, "min_repeats": 30, "min_seconds": 0.5}
    # the debug configs make the report's timing a smoke test (they set it themselves, not the tests' helper)
    for debug in ("limit", "fast_dev_run"):
        cfg = compose_config(tmp_path, f"debug={debug}", "latency.warmup=1")
        assert latency_timing(cfg)["min_repeats"] == 2 and latency_timing(cfg)["min_seconds"] == 0.0
    for bad, named in (("latency.min_repeats=1", "latency.min_repeats=1"), ("latency.warmup=-1", "latency.warmup=-1"),
                       ("latency.min_seconds=abc", "latency.min_seconds='abc'"),
                       ("latency.warmup=true", "latency.warmup=True")):
        with pytest.raises(ConfigError, match=re.escape(named)):
            latency_timing(compose_config(tmp_path, bad))
