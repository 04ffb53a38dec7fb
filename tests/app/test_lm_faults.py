"""Faults injected into kd-train's language-model path (experiment=lm_pydoc, shrunk): every file a later
command reads, damaged (caches rebuilt with a warning naming the file, files a user hands in refused in one
line), SIGTERM and Ctrl-C in each stage then resume=true, a full disk and a read-only file system, two
processes on one run directory, a diverging loss, and bad config values (one line each,
before any stage trains; each key of LM_CONFIG_BAD is a row of docs/bad-input.md).

One tiny run with stored teacher outputs is trained once per module and copied into the tests that
need it; the library functions are called directly where a subprocess is not what is tested.
"""
from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import empty, truncate

pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

from .test_lm_pipeline import TEXT, TINY, TINY_TEACHER, make_cfg  # noqa: E402

from kd_lightning import io as kd_io  # noqa: E402
from kd_lightning.app import rundir, teacher_store  # noqa: E402
from kd_lightning.app.errors import ConfigError  # noqa: E402
from kd_lightning.app.pipeline import run  # noqa: E402
from kd_lightning.cache import TeacherOutputsError  # noqa: E402
from kd_lightning.cache.tokens import FILES, TokenTeacherOutputs  # noqa: E402

STORED = ["distill.teacher_outputs=true", "distill.teacher_outputs_top_k=8"]
ROOT = Path(__file__).resolve().parents[2]


def kd_train_env(tmp_path: Path) -> dict:
    """kd-train in a subprocess imports this checkout's package (a relative PYTHONPATH would not follow cwd)."""
    return {**os.environ, "KD_CACHE_DIR": str(tmp_path / "cache"), "KD_LOG_DIR": str(tmp_path / "outputs"),
            "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory):
    """One finished tiny LM run (teacher, baseline, student on stored top-8 teacher outputs) and its cache."""
    tmp = tmp_path_factory.mktemp("lm_run")
    summary = run(make_cfg(tmp, tmp / "cache", *STORED))
    assert summary["teacher"]["source"] == summary["baseline"]["source"] == "trained"
    return tmp, summary


def copy_cache(lm_run, tmp_path: Path) -> Path:
    shutil.copytree(lm_run[0] / "cache", tmp_path / "cache")
    return tmp_path / "cache"


def only(cache: Path, pattern: str) -> Path:
    (path,) = cache.glob(pattern)
    return path


# ------------------------------------------------------------------------------------------ damage
def flip_bit(path: Path, at: float = 0.7) -> None:
    """One bit flipped inside the data (not the header): the file keeps its size and still parses."""
    raw = bytearray(path.read_bytes())
    raw[int(len(raw) * at)] ^= 0x40
    path.write_bytes(bytes(raw))


def garbage(path: Path) -> None:
    path.write_text("{")


def json_list(path: Path) -> None:  # valid JSON, yet not the record
    path.write_text("[]")


def drop_key(key: str):
    def damage(path: Path) -> None:
        meta = json.loads(path.read_text())
        del meta[key]
        path.write_text(json.dumps(meta))
    return damage


OUTPUTS = "teacher_outputs/train-*"


@pytest.mark.slow
def test_damaged_caches_are_rebuilt_in_one_run_and_the_student_ends_the_same(lm_run, tmp_path, caplog):
    """The teacher store entry, the stored baseline, the stored teacher outputs and the tokenizer cache, all
    damaged at once: each is rebuilt with a warning naming it, and the run ends as the intact one did."""
    cache = copy_cache(lm_run, tmp_path)
    teacher_ckpt, baseline_ckpt = only(cache, "teachers/*/teacher.ckpt"), only(cache, "baselines/*/baseline.ckpt")
    ids, tok_meta = only(cache, f"{OUTPUTS}/topk_ids.npy"), only(cache, "tokenizers/*/meta.json")
    tokenizer = (tok_meta.parent / "tokenizer.json").read_bytes()
    flip_bit(teacher_ckpt)
    truncate(baseline_ckpt)
    flip_bit(ids)
    json_list(tok_meta)
    with caplog.at_level(logging.WARNING):
        summary = run(make_cfg(tmp_path, cache, *STORED))
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert summary["teacher"]["source"] == "rebuilt (store digest mismatch)"
    assert summary["baseline"]["source"] == "rebuilt (store digest mismatch)"
    for path, words in ((teacher_ckpt, "training it again"), (baseline_ckpt, "training it again"),
                        (ids, "rebuilding damaged stored teacher outputs"), (tok_meta, "training it again")):
        assert any(str(path) in w and words in w for w in warnings), (path, warnings)
    # Rebuilt from the same seed and data: the same tokenizer, teacher, and so the same student.
    assert (tok_meta.parent / "tokenizer.json").read_bytes() == tokenizer
    assert summary["student"]["ppl"] == pytest.approx(lm_run[1]["student"]["ppl"], rel=1e-6)
    assert teacher_store.check_entry(teacher_ckpt.parent) == (True, "")
    TokenTeacherOutputs.open(ids.parent)  # verified again


OUTPUT_FAULTS = {
    **{f"{name} {how.__name__}": (name, how, "fails its checksum" if how is flip_bit else "truncated")
       for name in FILES for how in (flip_bit, truncate)},
    "meta.json garbage": ("meta.json", garbage, "unreadable"),
    "meta.json list": ("meta.json", json_list, "holds a JSON list"),
    "meta.json empty": ("meta.json", empty, "unreadable"),
    "meta.json without files": ("meta.json", drop_key("files"), "has no files"),
    "meta.json without top_k": ("meta.json", drop_key("top_k"), "has no top_k"),
}


@pytest.mark.parametrize("fault", sorted(OUTPUT_FAULTS))
def test_damaged_stored_teacher_outputs_are_refused_naming_the_file(lm_run, tmp_path, fault):
    """What opening (with every check) says of each damaged file; kd-train rebuilds on exactly this error."""
    name, damage, why = OUTPUT_FAULTS[fault]
    directory = only(copy_cache(lm_run, tmp_path), OUTPUTS)
    damage(directory / name)
    with pytest.raises(TeacherOutputsError, match=why) as info:
        TokenTeacherOutputs.open(directory)
    assert str(directory / name) in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("fault", ["tokenizer.json flip_bit", "tokenizer.json truncate", "meta.json garbage",
                                   "meta.json json_list", "meta.json empty"])
def test_a_damaged_tokenizer_cache_is_trained_again_with_a_warning(tmp_path, caplog, fault):
    from kd_lightning.data.text import train_bpe_tokenizer

    first = train_bpe_tokenizer([TEXT], vocab_size=300, cache_dir=tmp_path)
    (directory,) = (tmp_path / "tokenizers").iterdir()
    good = (directory / "tokenizer.json").read_bytes()
    name, how = fault.split()
    {"flip_bit": flip_bit, "truncate": truncate, "garbage": garbage, "json_list": json_list, "empty": empty}[how](
        directory / name)
    with caplog.at_level(logging.WARNING):
        again = train_bpe_tokenizer([TEXT], vocab_size=300, cache_dir=tmp_path)
    assert any(f"cached tokenizer {directory} is damaged" in r.getMessage() for r in caplog.records)
    assert (directory / "tokenizer.json").read_bytes() == good and again.get_vocab() == first.get_vocab()
    caplog.clear()
    train_bpe_tokenizer([TEXT], vocab_size=300, cache_dir=tmp_path)
    assert not caplog.records  # rewritten whole: read back without a word


@pytest.mark.parametrize("fault", ["teacher.ckpt flip_bit", "teacher.ckpt truncate", "meta.json json_list",
                                   "baseline.ckpt empty", "baseline.ckpt flip_bit"])
def test_a_damaged_lm_store_entry_is_not_used(lm_run, tmp_path, fault):
    name, how = fault.split()
    cache = copy_cache(lm_run, tmp_path)
    entry = only(cache, "baselines/*" if name == "baseline.ckpt" else "teachers/*")
    assert teacher_store.check_entry(entry) == (True, "")
    {"flip_bit": flip_bit, "truncate": truncate, "json_list": json_list, "empty": empty}[how](entry / name)
    ok, why = teacher_store.check_entry(entry)
    assert not ok and why in ("store digest mismatch", "store has no digest")


# ------------------------------------------------------------------------- files a user hands in
# Every damage through kd-eval; kd-export and teacher.ckpt_path share its reader (tests/app/test_bad_checkpoints.py
# cuts and empties them for classifiers), so they get the flipped bit only.
@pytest.mark.parametrize("tool, how", [("eval", "flip_bit"), ("eval", "truncate"), ("eval", "empty"),
                                       ("export", "flip_bit"), ("train", "flip_bit")])
def test_a_damaged_lm_student_checkpoint_is_one_line_naming_it(lm_run, tmp_path, tool, how):
    """student.ckpt read by kd-eval, kd-export, or given to kd-train as teacher.ckpt_path: a flipped bit in a
    tensor is caught by the digest written with the weights, a cut or empty file by the reader."""
    from helpers import compose_config

    ckpt = tmp_path / "student.ckpt"
    shutil.copy(lm_run[0] / "run" / "student.ckpt", ckpt)
    {"flip_bit": flip_bit, "truncate": truncate, "empty": empty}[how](ckpt)
    why = {"flip_bit": "differ from the digest written with them", "truncate": "cannot be read, it is truncated",
           "empty": r"is empty \(0 bytes\)"}[how]
    with pytest.raises(ConfigError, match=rf"checkpoint '{ckpt}' .*{why}") as info:
        if tool == "train":
            run(make_cfg(tmp_path, tmp_path / "cache", f"teacher.ckpt_path={ckpt}",
                         "teacher.net.hidden_size=16", "teacher.net.intermediate_size=32"))
        elif tool == "eval":
            from kd_lightning.app.eval import evaluate

            evaluate(compose_config(tmp_path, f"ckpt_path={ckpt}", "trainer.accelerator=cpu", name="eval", out="eval"))
        else:
            from kd_lightning.app.export import export

            export(compose_config(tmp_path, f"ckpt_path={ckpt}", f"output={tmp_path / 'hf'}", name="export",
                                  out="export"))
    assert "\n" not in str(info.value) and not (tmp_path / "hf").exists()
    assert not (tmp_path / "run" / "teacher").exists()


def test_an_intact_lm_student_checkpoint_carries_its_digest(lm_run):
    import torch

    blob = torch.load(lm_run[0] / "run" / "student.ckpt", map_location="cpu", weights_only=False)
    assert blob["weights_sha256"] == kd_io.state_dict_sha256(blob["state_dict"])


@pytest.mark.parametrize("how", ["flip_bit", "truncate", "checksums garbage"])
def test_a_damaged_exported_lm_directory_is_one_line_naming_the_file(lm_run, tmp_path, how):
    """The exported student_hf/ read back as a teacher (teacher=hf_local): kd-train wrote checksums.sha256 beside
    the weights, so a flipped bit in a tensor is named like a cut file."""
    hf = tmp_path / "student_hf"
    shutil.copytree(lm_run[0] / "run" / "student_hf", hf)
    weights = hf / "model.safetensors"
    if how == "checksums garbage":
        (hf / "checksums.sha256").write_text("not a digest\n")
        named, why = hf / "checksums.sha256", "line 1 is not '<sha256>  <file name>'"
    else:
        {"flip_bit": flip_bit, "truncate": truncate}[how](weights)
        named, why = weights, ("does not match its SHA-256 in checksums.sha256" if how == "flip_bit"
                               else "is truncated or damaged")
    with pytest.raises(ConfigError, match=r"^could not build the teacher network from teacher.net \(hf_local\)") as info:
        run(make_cfg(tmp_path, tmp_path / "cache", "teacher=hf_local", f"teacher.name_or_path={hf}",
                     f"data.tokenizer={hf}", "baseline.enabled=false"))
    assert f"'{named}'" in str(info.value) and why in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / "run" / "teacher").exists()


def test_the_exported_lm_directory_lists_its_digests(lm_run):
    from kd_lightning.models.local_files import check_model_dir

    hf = lm_run[0] / "run" / "student_hf"
    listed = {line.split("  ")[1] for line in (hf / "checksums.sha256").read_text().splitlines()}
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= listed
    assert check_model_dir(hf)  # intact: accepted


@pytest.mark.parametrize("how", ["garbage", "json_list", "empty"])
def test_a_damaged_sequence_kd_record_regenerates_the_completions(tmp_path, caplog, how):
    """The sequence-KD cache (distill.sequence_kd): its meta.json damaged is a cache miss with a warning."""
    import torch

    from kd_lightning.lm.generation import Sampling
    from kd_lightning.lm.seqkd import SequenceKDDataModule

    from lm.helpers import TinyLM
    from lm.test_seqkd import Text

    def completions():
        dm = SequenceKDDataModule(Text(), TinyLM(seed=1), str(tmp_path), Sampling(max_new_tokens=8, prompt_tokens=4),
                                  seed=3)
        dm.setup("fit")
        return dm.completions

    first = completions()
    meta = only(tmp_path, "seqkd-*/meta.json")
    {"garbage": garbage, "json_list": json_list, "empty": empty}[how](meta)
    with caplog.at_level(logging.WARNING):
        again = completions()
    assert any(str(meta) in r.getMessage() and "generating them again" in r.getMessage() for r in caplog.records)
    assert torch.equal(again["input_ids"], first["input_ids"]) and json.loads(meta.read_text())["sha256"]


def test_a_sweep_job_with_a_damaged_summary_is_listed_as_failed(tmp_path):
    from kd_lightning.app.sweep import collect

    for job, text in (("0", json.dumps({"student": {"ppl": 3.0}})), ("1", "{"), ("2", "[]")):
        (tmp_path / job).mkdir()
        (tmp_path / job / "summary.json").write_text(text)
    rows = {r["job"]: r for r in collect(tmp_path)}
    assert rows["0"]["status"] == "ok" and rows["0"]["student/ppl"] == 3.0
    for job in ("1", "2"):
        assert rows[job]["status"] == "failed"
        assert rows[job]["error"] == f"{tmp_path / job / 'summary.json'} is not readable JSON"


# ------------------------------------------------------------------------ stage records on resume
@pytest.mark.parametrize("fault", ["stage.json garbage", "stage.json json_list", "stage.json empty",
                                   "weights.pt flip_bit", "weights.pt truncate", "stage.json drop weights_sha256"])
def test_a_damaged_stage_record_runs_the_stage_again(lm_run, tmp_path, caplog, fault):
    from hydra.utils import instantiate

    from kd_lightning.app import resume

    stage = tmp_path / "teacher"
    shutil.copytree(lm_run[0] / "run" / "teacher", stage)
    net = instantiate(make_cfg(tmp_path, tmp_path / "cache").teacher.net)
    assert resume.finished_stage(stage, net) is not None  # intact: read back
    name, how = fault.split(" ", 1)
    damage = {"garbage": garbage, "json_list": json_list, "empty": empty, "flip_bit": flip_bit, "truncate": truncate,
              "drop weights_sha256": drop_key("weights_sha256")}[how]
    damage(stage / name)
    with caplog.at_level(logging.WARNING):
        assert resume.finished_stage(stage, net) is None
    assert any(m.startswith("stage teacher: ") and "running the stage again" in m
               for m in (r.getMessage() for r in caplog.records))


# ------------------------------------------------------------------------------ SIGTERM and Ctrl-C
def interrupted_then_resumed(tmp_path: Path, cache: Path, stage: str, step: int, sig: str):
    """kd-train's job function under the entry point's guard, a signal at ``step`` of ``stage``; then the
    same config with resume=true. Returns (the first run's one line, the resumed summary)."""
    from kd_lightning.app.interrupt import SigtermGuard
    from kd_lightning.app.train import run_task

    marker = tmp_path / "killed"
    killer = ["+callbacks.killer._target_=app.killer.SigtermAtStep", f"+callbacks.killer.stage={stage}",
              f"+callbacks.killer.step={step}", f"+callbacks.killer.marker={marker}", f"+callbacks.killer.sig={sig}"]
    with SigtermGuard(), pytest.raises(SystemExit) as stopped:
        run_task(make_cfg(tmp_path, cache, *killer))
    assert marker.read_text() == str(step)
    with SigtermGuard():
        run_task(make_cfg(tmp_path, cache, *killer, "resume=true"))
    return str(stopped.value), json.loads((tmp_path / "run" / "summary.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("stage, sig", [("teacher", "SIGTERM"), ("baseline", "SIGINT"), ("student", "SIGTERM")])
def test_a_signal_in_each_lm_stage_leaves_a_resumable_run(lm_run, tmp_path, caplog, stage, sig):
    cache = copy_cache(lm_run, tmp_path)
    # The interrupted stage must train here: drop what the store would give it.
    shutil.rmtree(cache / ("teachers" if stage == "teacher" else "baselines"))
    if stage == "teacher":
        shutil.rmtree(cache / "baselines")
    out = tmp_path / "run"
    with caplog.at_level(logging.INFO):
        line, summary = interrupted_then_resumed(tmp_path, cache, stage, 3, sig)
    assert line.startswith(f"kd-train: interrupted by {sig}; the running stage saved a resumable checkpoint in {out}")
    assert "resume=true" in line and "\n" not in line
    log = [r.getMessage() for r in caplog.records]
    assert any(m.startswith(f"stage {stage}: resuming") for m in log), log
    assert not (out / stage / "checkpoints" / "interrupted.ckpt").exists()  # consumed by the resumed stage
    assert summary[stage]["ppl"] > 1 and summary["student"]["ppl"] > 1
    finished_before = {"teacher": [], "baseline": ["teacher"], "student": ["teacher", "baseline"]}[stage]
    assert all(summary[s]["source"] == "resumed" for s in finished_before)
    if stage != "student":
        assert summary[stage]["source"] == "trained"
        entry = only(cache, ("teachers" if stage == "teacher" else "baselines") + "/*")
        assert teacher_store.check_entry(entry) == (True, "")  # stored once finished, digest and all


@pytest.mark.slow
def test_sigterm_while_teacher_outputs_are_stored_leaves_nothing_a_later_run_trusts(lm_run, tmp_path, monkeypatch):
    """Outside a fit (the teacher runs over the training set): one line, no meta.json, resume builds it."""
    import signal

    from kd_lightning.app.interrupt import SigtermGuard
    from kd_lightning.app.train import run_task
    from kd_lightning.cache import tokens

    cache = copy_cache(lm_run, tmp_path)
    shutil.rmtree(cache / "teacher_outputs")
    plain, calls = tokens.lm_logits, []

    def logits_then_sigterm(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return plain(*args, **kwargs)

    monkeypatch.setattr(tokens, "lm_logits", logits_then_sigterm)
    with SigtermGuard(), pytest.raises(SystemExit) as stopped:
        run_task(make_cfg(tmp_path, cache, *STORED))
    assert str(stopped.value).startswith("kd-train: interrupted by SIGTERM; finished stages are kept and nothing "
                                         "half-written was left")
    outputs = cache / "teacher_outputs"
    assert not list(outputs.rglob("meta.json")) and not list(outputs.rglob(".*.tmp"))
    monkeypatch.setattr(tokens, "lm_logits", plain)
    with SigtermGuard():
        run_task(make_cfg(tmp_path, cache, *STORED, "resume=true"))
    assert list(outputs.rglob("meta.json"))
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["teacher"]["source"] == summary["baseline"]["source"] == "store"  # as in the stopped run
    assert summary["student"]["ppl"] == pytest.approx(lm_run[1]["student"]["ppl"], rel=1e-6)


@pytest.mark.slow
def test_a_damaged_interrupted_checkpoint_restarts_its_stage(lm_run, tmp_path, caplog):
    from kd_lightning.app.interrupt import SigtermGuard
    from kd_lightning.app.train import run_task

    cache = copy_cache(lm_run, tmp_path)
    shutil.rmtree(cache / "baselines")
    marker = tmp_path / "killed"
    killer = ["+callbacks.killer._target_=app.killer.SigtermAtStep", "+callbacks.killer.stage=baseline",
              "+callbacks.killer.step=2", f"+callbacks.killer.marker={marker}"]
    with SigtermGuard(), pytest.raises(SystemExit):
        run_task(make_cfg(tmp_path, cache, *killer))
    ckpt = tmp_path / "run" / "baseline" / "checkpoints" / "interrupted.ckpt"
    truncate(ckpt)
    with caplog.at_level(logging.INFO), SigtermGuard():
        run_task(make_cfg(tmp_path, cache, *killer, "resume=true"))
    log = [r.getMessage() for r in caplog.records]
    assert any(str(ckpt) in m and "cannot be read" in m and "from its start" in m for m in log), log
    assert any(m.startswith("stage baseline: training") for m in log)
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["baseline"]["source"] == "trained"


# --------------------------------------------------------------------- full disk, read-only files
@pytest.mark.parametrize("target, code, words", [
    pytest.param("topk_ids.npy", errno.ENOSPC, "the disk is full", marks=pytest.mark.slow),
    pytest.param("student.ckpt", errno.EROFS, "read-only", marks=pytest.mark.slow),
    ("tokenizer.json", errno.ENOSPC, "the disk is full"),
])
def test_an_unwritable_file_is_one_line_naming_it_and_nothing_half_written_is_used(lm_run, tmp_path, monkeypatch,
                                                                                   target, code, words):
    from kd_lightning.app.train import run_task

    cache = copy_cache(lm_run, tmp_path)
    if target != "student.ckpt":  # the file must be written anew: drop the cache that holds it
        shutil.rmtree(cache / ("tokenizers" if target == "tokenizer.json" else "teacher_outputs"))
    plain = kd_io.fsync

    def failing(path):
        if Path(path).name.startswith(f".{target}."):
            raise OSError(code, os.strerror(code), str(path))
        return plain(path)

    monkeypatch.setattr(kd_io, "fsync", failing)
    with pytest.raises(SystemExit) as stopped:
        run_task(make_cfg(tmp_path, cache, *STORED))
    line = str(stopped.value)
    assert line.startswith("kd-train: error: cannot write '") and f"/{target}' ({os.strerror(code)})" in line
    assert words in line and "\n" not in line
    assert not list(tmp_path.rglob(f".{target}.*"))  # its temporary file is gone
    assert not list((tmp_path / ("run" if target == "student.ckpt" else "cache")).rglob(target))  # no final file
    if target == "topk_ids.npy":  # nothing marks it complete: the next run builds it (as after a SIGTERM below)
        assert not list((cache / "teacher_outputs").rglob("meta.json"))


# -------------------------------------------------------------------- two processes, one directory
# Two LM processes needing one teacher train it once: tests/app/test_sweep.py (a joblib LM sweep of two jobs).
def test_a_second_process_on_an_lm_run_directory_is_refused_in_one_line(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    fd = os.open(out / rundir.LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)  # what another kd-train process holds while it runs there
    try:
        with pytest.raises(ConfigError, match=rf"^run directory '{out}' is in use by another kd-train process"):
            rundir.claim(make_cfg(tmp_path, tmp_path / "cache"))
    finally:
        os.close(fd)


# ------------------------------------------------------------------------------- a diverging loss
@pytest.mark.slow
def test_a_diverging_lm_sweep_job_records_the_one_line(tmp_path):
    """optim.optimizer.lr=1e30 makes the loss non-finite at once: in a sweep the job's error is the one line
    naming the stage, the step and the term (tests/app/test_rundir.py shows the other jobs still run)."""
    exe = Path(sys.executable).parent / "kd-train"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "kd_lightning.app.train"]
    env = kd_train_env(tmp_path)
    sweep = tmp_path / "sweep"
    args = [*TINY, *TINY_TEACHER, "baseline.enabled=false", "samples.prompts=[]"]
    proc = subprocess.run(cmd + ["-m", *args, "optim.optimizer.lr=1e30", f"hydra.sweep.dir={sweep}"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0
    (status,) = [json.loads(p.read_text()) for p in sweep.glob("*/job_status.json")]
    assert status["status"] == "failed", status
    error = status["error"]
    assert error.startswith("kd-train: error: stage teacher: the loss became non-finite at global step ")
    assert "bad term(s): 'ce'" in error and "\n" not in error
    assert error in (sweep / "sweep_summary.md").read_text().replace("\\|", "|")
    assert "Traceback" not in (sweep / "sweep_summary.md").read_text()


def test_a_diverging_lm_run_stops_in_one_line_and_stores_nothing(lm_run, tmp_path):
    from kd_lightning.app.train import run_task

    with pytest.raises(SystemExit) as stopped:
        run_task(make_cfg(tmp_path, tmp_path / "cache", "optim.optimizer.lr=1e30"))
    line = str(stopped.value)
    assert line.startswith("kd-train: error: stage teacher: the loss became non-finite at global step ")
    assert "bad term(s): 'ce'" in line and "\n" not in line
    assert not list((tmp_path / "cache").glob("teachers/*/meta.json"))  # no diverged teacher is kept


# ------------------------------------------------------------------------------- bad config values
def _a_file(tmp: Path) -> str:
    path = tmp / "a_file"
    path.write_text("not a directory\n")
    return str(path)


# Each key is a row of docs/bad-input.md (tests/test_docs.py checks the two agree): (overrides, the one line).
LM_CONFIG_BAD = {
    "experiment=lm_pydoc teacher_fit.max_steps=-1": (
        lambda tmp: ["teacher_fit.max_steps=-1"], r"^teacher_fit.max_steps=-1 is not a number of training steps"),
    "experiment=lm_pydoc teacher_fit.max_steps=abc": (
        lambda tmp: ["teacher_fit.max_steps=abc"], r"^teacher_fit.max_steps='abc' is not a number of training steps"),
    "experiment=lm_pydoc teacher_fit.max_steps=0": (
        lambda tmp: ["teacher_fit.max_steps=0"], r"^teacher_fit.max_steps=0 would test an untrained teacher"),
    "experiment=lm_pydoc module.vocab_alignment=nope": (
        lambda tmp: ["module.vocab_alignment=nope"], r"^module.vocab_alignment='nope' is not known; use .*=strict"),
    "experiment=lm_pydoc trainer=gpu (no GPU on this machine)": (
        lambda tmp: ["trainer=gpu"], r"^trainer.accelerator='gpu' \(trainer=gpu sets it\) needs a GPU, and torch sees "
                                     r"none on this machine; run on the CPU with trainer=cpu"),
    "experiment=lm_pydoc trainer.accelerator=cuda (no GPU on this machine)": (
        lambda tmp: ["trainer.accelerator=cuda"], r"^trainer.accelerator='cuda' needs a GPU"),
    "experiment=lm_pydoc trainer.accelerator=npu": (
        lambda tmp: ["trainer.accelerator=npu"], r"^trainer.accelerator='npu' is not an accelerator Lightning knows"),
    "experiment=lm_pydoc trainer.devices=abc": (
        lambda tmp: ["trainer.devices=abc"], r"^trainer.devices='abc' is not a number of devices"),
    "experiment=lm_pydoc distill.teacher_outputs=<a file>": (
        lambda tmp: [f"distill.teacher_outputs={_a_file(tmp)}"],
        r"^distill.teacher_outputs='.*a_file' cannot be a directory: '.*a_file' is a file"),
    "experiment=lm_pydoc data.cache_dir=<a file>": (
        lambda tmp: [f"data.cache_dir={_a_file(tmp)}"], r"^data.cache_dir='.*a_file' cannot be a directory"),
    "experiment=lm_pydoc module.finite_check_interval=0": (
        lambda tmp: ["module.finite_check_interval=0"], r"^module.finite_check_interval=0 must be a positive number"),
    "experiment=lm_pydoc module.bytes_per_token=-1": (
        lambda tmp: ["module.bytes_per_token=-1"], r"^module.bytes_per_token=-1 must be a positive number"),
    "experiment=lm_pydoc module.ensemble_mode=nope": (
        lambda tmp: ["module.ensemble_mode=nope"], r"^module.ensemble_mode='nope' is not known"),
    "experiment=lm_pydoc module.check_finite=maybe": (
        lambda tmp: ["module.check_finite=maybe"], r"^module.check_finite='maybe' must be true or false"),
    "experiment=lm_pydoc distill.teacher_outputs_tail=maybe": (
        lambda tmp: ["distill.teacher_outputs_tail=maybe"], r"^distill.teacher_outputs_tail='maybe' must be true or"),
    "experiment=lm_pydoc teacher_fit.seed=abc": (
        lambda tmp: ["teacher_fit.seed=abc"], r"^teacher_fit.seed='abc' must be an integer from 0 to 2\*\*32-1"),
    "experiment=lm_pydoc samples.prompts=5": (
        lambda tmp: ["samples.prompts=5"], r"^samples.prompts=5 must be a list of texts to continue"),
}


@pytest.mark.parametrize("case", sorted(LM_CONFIG_BAD))
def test_a_bad_lm_config_value_is_one_line_before_any_stage(tmp_path, case):
    overrides, expected = LM_CONFIG_BAD[case]
    with pytest.raises(ConfigError, match=expected) as info:
        run(make_cfg(tmp_path, tmp_path / "cache", *overrides(tmp_path)))
    assert "\n" not in str(info.value) and not (tmp_path / "run" / "teacher").exists()
    assert not (tmp_path / "cache" / "tokenizers").exists()  # refused before the data were even read


def test_a_teacher_with_weights_may_skip_training(lm_run, tmp_path):
    """teacher_fit.max_steps=0 is meaningful for a teacher that has weights: it is tested as it is."""
    hf = lm_run[0] / "run" / "student_hf"
    summary = run(make_cfg(tmp_path, tmp_path / "cache", "teacher=hf_local", f"teacher.name_or_path={hf}",
                           f"data.tokenizer={hf}", "teacher_fit.max_steps=0", "baseline.enabled=false",
                           "samples.prompts=[]"))
    assert summary["teacher"]["source"] == "pretrained"


def test_good_lm_values_near_the_bad_ones_pass(tmp_path):
    from kd_lightning.app.checks import check_train_config

    for overrides in (["teacher_fit.max_steps=1", "module.vocab_alignment=truncate", "trainer.accelerator=auto",
                       "trainer.devices='1'", "module.finite_check_interval=5", "module.bytes_per_token=3.5",
                       "module.ensemble_mode=logits", "module.check_finite=false", "teacher_fit.seed=0",
                       "samples.prompts=[]", f"distill.teacher_outputs={tmp_path / 'new'}"],
                      ["teacher=hf_local", "teacher.name_or_path=somewhere", "teacher_fit.max_steps=0",
                       "trainer.devices=auto"]):
        check_train_config(make_cfg(tmp_path, tmp_path / "cache", *overrides))
