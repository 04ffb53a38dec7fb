"""Faults injected into kd-train's runs and caches: the cached teacher (flipped sign bits, truncation,
missing record), its cache key, and concurrent processes needing the same teacher."""
from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
from helpers import compose_config, empty, truncate
import torch
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from kd_lightning.app import teacher_store
from kd_lightning.app.build import build_datamodule, build_module_factory
from kd_lightning.app.confdir import CONFIG_DIR
from kd_lightning.app.pipeline import stages_for, teacher_plan
from kd_lightning.app.tasks import task_for
from kd_lightning.app.teacher_stage import obtain_trained

FAST = ["trainer.max_epochs=2", "+trainer.limit_train_batches=4", "+trainer.limit_val_batches=2",
        "trainer.accelerator=cpu", "trainer.enable_progress_bar=false", "trainer.num_sanity_val_steps=0",
        # the report's latency as a smoke test (timing each model properly is most of a tiny run)
        "latency.warmup=1", "latency.min_repeats=2", "latency.min_seconds=0",
        "logger={}"]


def make_cfg(tmp_path: Path, *overrides: str, out: str = "run"):
    # The plain-KD job: these faults concern the teacher cache and its key, not the default recipe.
    return compose_config(tmp_path, "experiment=mnist1d_kd", *overrides, out=out)


def teacher_stage(cfg):
    """The teacher stage alone, as kd-train runs it."""
    L.seed_everything(cfg.seed, workers=True)
    dm = build_datamodule(cfg.data)
    dm.setup("fit")
    task = task_for(cfg.task, cfg)
    net, result = obtain_trained(teacher_plan(cfg, task, dm), task, dm, stages_for(cfg, task, dm),
                                 build_module_factory(cfg.module))
    return net, result


def state(net):
    return {k: v.clone() for k, v in net.state_dict().items()}


# ------------------------------------------------------------------------------- the cached teacher
def flip_sign_bits(path: Path) -> None:
    """The reported fault: the cached weights negated (the file stays a valid checkpoint)."""
    blob = torch.load(path, map_location="cpu", weights_only=False)
    blob["state_dict"] = {k: (-v if v.is_floating_point() else v) for k, v in blob["state_dict"].items()}
    torch.save(blob, path)


def drop_meta(path: Path) -> None:
    (path.parent / "meta.json").unlink()


def garbage_meta(path: Path) -> None:
    (path.parent / "meta.json").write_text("{")


def meta_without_digest(path: Path) -> None:  # a cache written before digests were recorded
    meta = json.loads((path.parent / "meta.json").read_text())
    del meta["sha256"]
    (path.parent / "meta.json").write_text(json.dumps(meta))


CASES = {
    "sign_bits": (flip_sign_bits, "rebuilt (store digest mismatch)"),
    "truncated": (truncate, "rebuilt (store digest mismatch)"),
    "empty": (empty, "rebuilt (store digest mismatch)"),
    "no_meta": (drop_meta, "rebuilt (store has no meta.json)"),
    "garbage_meta": (garbage_meta, "rebuilt (store meta.json unreadable)"),
    "no_digest": (meta_without_digest, "rebuilt (store has no digest)"),
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One trained teacher and its cache entry, copied into each test."""
    tmp = tmp_path_factory.mktemp("trained")
    cfg = make_cfg(tmp, *FAST)
    net, result = teacher_stage(cfg)
    assert result.source == "trained"
    entry = teacher_store.entry_dir(cfg)
    meta = json.loads((entry / "meta.json").read_text())
    assert meta["sha256"] == teacher_store.io.file_sha256(entry / "teacher.ckpt")
    return tmp, state(net), result.acc


def fresh_copy(trained, tmp_path):
    import shutil

    src, weights, acc = trained
    shutil.copytree(src / "cache", tmp_path / "cache")
    return weights, acc


def test_an_intact_cached_teacher_is_reused(trained, tmp_path):
    weights, acc = fresh_copy(trained, tmp_path)
    net, result = teacher_stage(make_cfg(tmp_path, *FAST))
    assert result.source == "store" and result.acc == pytest.approx(acc)
    assert all(torch.equal(net.state_dict()[k], v) for k, v in weights.items())


@pytest.mark.parametrize("fault", sorted(CASES))
def test_a_damaged_cached_teacher_is_trained_again_and_reported(trained, tmp_path, caplog, fault):
    weights, acc = fresh_copy(trained, tmp_path)
    cfg = make_cfg(tmp_path, *FAST)
    ckpt = teacher_store.entry_dir(cfg) / "teacher.ckpt"
    damage, source = CASES[fault]
    damage(ckpt)
    with caplog.at_level("WARNING"):
        net, result = teacher_stage(cfg)
    assert result.source == source
    assert any(str(ckpt) in r.getMessage() and "training it again" in r.getMessage() for r in caplog.records)
    # The rebuilt teacher is the original one (same seed, same data) and is recorded again.
    assert all(torch.equal(net.state_dict()[k], v) for k, v in weights.items())
    assert result.acc == pytest.approx(acc)
    assert teacher_store.check_entry(ckpt.parent) == (True, "")
    _, again = teacher_stage(cfg)
    assert again.source == "store"


def test_the_rebuilt_source_reaches_summary_json(trained, tmp_path):
    from kd_lightning.app.pipeline import run

    fresh_copy(trained, tmp_path)
    cfg = make_cfg(tmp_path, *FAST, "baseline.enabled=false")
    flip_sign_bits(teacher_store.entry_dir(cfg) / "teacher.ckpt")
    run(cfg)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["teacher"]["source"] == "rebuilt (store digest mismatch)"


def test_a_checkpoint_matching_its_digest_but_not_loading_is_rebuilt(trained, tmp_path):
    fresh_copy(trained, tmp_path)
    cfg = make_cfg(tmp_path, *FAST)
    entry = teacher_store.entry_dir(cfg)
    teacher_store.write_entry(entry, {"state_dict": {"student.nope": torch.zeros(1)}}, {"acc": 1.0})
    _, result = teacher_stage(cfg)
    assert result.source == "rebuilt (store entry unreadable)"


# ------------------------------------------------------------------------------------ the cache key
def composed_trainer_keys():
    keys = set()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        from hydra.core.global_hydra import GlobalHydra

        for option in GlobalHydra.instance().config_loader().get_group_options("trainer"):
            keys |= set(compose("train", overrides=[f"trainer={option}"]).trainer.keys())
    return keys


def test_every_trainer_field_is_in_the_key_or_listed_as_not_changing_the_teacher():
    signature = set(inspect.signature(L.Trainer.__init__).parameters) - {"self"}
    fields = signature | composed_trainer_keys()
    listed = teacher_store.TRAINER_KEY_FIELDS | set(teacher_store.TRAINER_NOT_KEY_FIELDS)
    unlisted = sorted(fields - listed)
    assert not unlisted, (f"Trainer fields {unlisted} are on neither list of kd_lightning/app/teacher_store.py: "
                          "add each to TRAINER_KEY_FIELDS (it changes the trained teacher) or to "
                          "TRAINER_NOT_KEY_FIELDS with the reason it does not")
    assert not teacher_store.TRAINER_KEY_FIELDS & set(teacher_store.TRAINER_NOT_KEY_FIELDS)


def _key(tmp_path, *overrides):
    return teacher_store.teacher_key(make_cfg(tmp_path, *overrides))


def test_each_key_field_changes_the_key_and_each_other_field_does_not(tmp_path):
    base_cfg = make_cfg(tmp_path)
    base = teacher_store.teacher_key(base_cfg)
    for field in sorted(teacher_store.TRAINER_KEY_FIELDS | set(teacher_store.TRAINER_NOT_KEY_FIELDS)):
        cfg = make_cfg(tmp_path, "teacher_fit.max_epochs=40")  # fixed, so trainer.max_epochs can vary alone
        with open_dict(cfg):
            cfg.trainer[field] = "changed-value"
        changed = teacher_store.teacher_key(cfg) != teacher_store.teacher_key(make_cfg(tmp_path, "teacher_fit.max_epochs=40"))
        assert changed == (field in teacher_store.TRAINER_KEY_FIELDS), field
    # The reported case: a budget field given with + on the command line.
    assert _key(tmp_path, "trainer.max_steps=3") != base
    assert _key(tmp_path, "+trainer.some_future_field=1") != base  # unknown fields are in the key
    for override in ("trainer.precision=16-mixed", "seed=1", "optim.optimizer.lr=0.001", "data.batch_size=64",
                     "teacher=cnn1d_64", "teacher_fit.max_epochs=3", "trainer.max_epochs=3",
                     "module.channels_last=true", "callbacks=early_stopping", "test_ckpt=last",
                     "+trainer.accumulate_grad_batches=2", "+trainer.gradient_clip_val=1.0"):
        assert _key(tmp_path, override) != base, override
    for override in ("data.num_workers=2", "distill=dkd", "student=cnn1d_8", "logger=none", "torch_threads=2",
                     "trainer.enable_progress_bar=false", "trainer.log_every_n_steps=5", "module.save_teacher=true",
                     "teacher_fit.use_store=true", "baseline.enabled=false"):
        assert _key(tmp_path, override) == base, override
    # trainer.max_epochs changes the teacher only through teacher_fit.max_epochs.
    assert (_key(tmp_path, "teacher_fit.max_epochs=5", "trainer.max_epochs=7")
            == _key(tmp_path, "teacher_fit.max_epochs=5", "trainer.max_epochs=9"))


def test_a_teacher_trained_with_a_step_budget_is_not_reused_without_it(tmp_path):
    _, limited = teacher_stage(make_cfg(tmp_path, *FAST, "trainer.max_steps=3"))
    _, full = teacher_stage(make_cfg(tmp_path, *FAST))
    assert limited.source == full.source == "trained"


# ------------------------------------------------------------------------------------------ locking
def _hold_lock(entry, ready, release):
    with teacher_store.entry_lock(Path(entry)):
        ready.set()
        release.wait(30)


def test_the_lock_waits_for_its_holder_and_a_dead_holder_frees_it(tmp_path):
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold_lock, args=(str(tmp_path), ready, release))
    holder.start()
    assert ready.wait(60)
    with teacher_store.entry_lock(tmp_path, timeout_s=0.5, poll_s=0.1) as held:
        assert held is False  # timed out: treated as stale
    os.kill(holder.pid, 9)  # killed while holding it: the kernel releases a flock
    holder.join(30)
    t0 = time.monotonic()
    with teacher_store.entry_lock(tmp_path, timeout_s=10, poll_s=0.1) as held:
        assert held is True and time.monotonic() - t0 < 5


def cli(tool, *args, cwd, env_extra=None):
    exe = Path(sys.executable).parent / tool
    env = {**os.environ, "KD_CACHE_DIR": str(cwd / "cache"), "KD_LOG_DIR": str(cwd / "outputs"),
           "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **(env_extra or {})}
    return subprocess.Popen([str(exe), *args], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


@pytest.mark.slow
def test_two_processes_needing_the_same_teacher_train_it_once(tmp_path):
    args = [*FAST, "baseline.enabled=false", "trainer.max_epochs=3"]
    procs = [cli("kd-train", *args, f"hydra.run.dir=run{i}", cwd=tmp_path) for i in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    sources = sorted(json.loads((tmp_path / f"run{i}" / "summary.json").read_text())["teacher"]["source"]
                     for i in range(2))
    assert sources == ["store", "trained"]
    assert len(list((tmp_path / "cache" / "teachers").iterdir())) == 1


# -------------------------------------------------------------------------- the teacher-output cache
def test_kd_train_rebuilds_negated_cached_teacher_outputs(trained, tmp_path, caplog):
    """The reported fault: the training logits.npy negated in place gave a 0.2% student with exit 0."""
    import numpy as np

    from kd_lightning.app.pipeline import run

    fresh_copy(trained, tmp_path)
    cfg = make_cfg(tmp_path, *FAST, "baseline.enabled=false", "distill.teacher_outputs=true")
    run(cfg)
    (train_dir,) = (tmp_path / "cache" / "teacher_outputs").glob("train-*")
    good = np.load(train_dir / "logits.npy").copy()
    arr = np.load(train_dir / "logits.npy", mmap_mode="r+")
    arr[:] = -arr
    arr.flush()
    del arr
    with caplog.at_level("WARNING"):
        run(make_cfg(tmp_path, *FAST, "baseline.enabled=false", "distill.teacher_outputs=true", out="run2"))
    assert any("rebuilding damaged stored teacher outputs" in r.getMessage() and "logits.npy" in r.getMessage()
               for r in caplog.records)
    assert np.array_equal(np.load(train_dir / "logits.npy"), good)


# ------------------------------------------------------------------------------ the stored baseline
@pytest.mark.slow
def test_a_sweep_over_distill_settings_trains_the_labels_only_baseline_once(trained, tmp_path, caplog):
    """The baseline's store key leaves out distill.*: the second job reads the first one's baseline back
    (digest-checked), a changed seed trains its own, and a damaged stored baseline is trained again."""
    from kd_lightning.app.pipeline import run

    fresh_copy(trained, tmp_path)
    first = run(make_cfg(tmp_path, *FAST, "distill.temperature=2", out="a"))
    second = run(make_cfg(tmp_path, *FAST, "distill.temperature=8", "distill.kd_weight=0.5", out="b"))
    assert (first["baseline"]["source"], second["baseline"]["source"]) == ("trained", "store")
    assert second["baseline"]["acc"] == pytest.approx(first["baseline"]["acc"])
    (entry,) = (tmp_path / "cache" / "baselines").iterdir()
    assert teacher_store.check_entry(entry) == (True, "") and (entry / "baseline.ckpt").is_file()
    assert run(make_cfg(tmp_path, *FAST, "seed=7", out="c"))["baseline"]["source"] == "trained"
    assert len(list((tmp_path / "cache" / "baselines").iterdir())) == 2

    flip_sign_bits(entry / "baseline.ckpt")
    with caplog.at_level("WARNING"):
        again = run(make_cfg(tmp_path, *FAST, "distill.temperature=4", out="d"))
    assert again["baseline"]["source"] == "rebuilt (store digest mismatch)"
    assert again["baseline"]["acc"] == pytest.approx(first["baseline"]["acc"])  # the same seed: the same network
    assert any("stored baseline" in r.getMessage() and "training it again" in r.getMessage() for r in caplog.records)
    off = run(make_cfg(tmp_path, *FAST, "baseline.use_store=false", out="e"))
    assert off["baseline"]["source"] == "trained"
