"""kd-train's resume is exact: a student stage stopped by SIGTERM mid-epoch and continued with resume=true ends
with the same weights (bit for bit), the same summary and the same logged metrics as the run never stopped,
for the classifier default (MNIST-1D with its transfer set, patient-and-consistent KD) and the language-model
default (experiment=lm_pydoc), both shrunk. The app runs in this process (kd_lightning.app.pipeline.run, what
the kd-train entry point calls); test_interrupt.py covers the entry point's own exit and message."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException

from helpers import compose_config
from kd_lightning.app.pipeline import run

SHORT = ["trainer.accelerator=cpu", "trainer.enable_progress_bar=false", "trainer.num_sanity_val_steps=0",
         "+trainer.limit_val_batches=2", "+trainer.limit_test_batches=2", "baseline.enabled=false"]
# The default job (data=mnist1d_transfer, distill=patient_consistent: mixup draws from the global generators),
# 6 batches an epoch: step 8 is in the middle of the second epoch, after one validation.
CLASSIFIER = [*SHORT, "trainer.max_epochs=2", "teacher_fit.max_epochs=1", "+trainer.limit_train_batches=6",
              "data.transfer_samples=400"]
# experiment=lm_pydoc with tiny models; validation every 4 steps, the stop at step 5 falls after the first.
LM = [*SHORT, "experiment=lm_pydoc", "teacher_fit.max_steps=4", "trainer.max_steps=8", "data.seq_len=32",
      "data.vocab_size=300", "samples.max_new_tokens=2", "+trainer.val_check_interval=4", "trainer.log_every_n_steps=1",
      "student.net.hidden_size=16", "student.net.num_layers=1", "student.net.intermediate_size=32",
      "teacher.net.hidden_size=32", "teacher.net.num_layers=1", "teacher.net.intermediate_size=64"]
# Wall-clock figures, and where things were written, are not results.
TIMING = {"wall_s", "latency_ms", "latency_iqr_ms", "latency_serving_ms_per_sample", "tokens_per_s", "ckpt_path",
          "train/tokens_per_s"}


def killer(tmp_path: Path, step: int):
    return ["+callbacks.killer._target_=app.killer.SigtermAtStep", "+callbacks.killer.stage=student",
            f"+callbacks.killer.step={step}", f"+callbacks.killer.marker={tmp_path / 'killed'}"]


def logged(run_dir: Path):
    """The student's CSV rows by step, wall-clock columns left out."""
    with open(run_dir / "csv" / "student" / "metrics.csv") as f:
        rows = [{k: v for k, v in r.items() if v and k not in TIMING} for r in csv.DictReader(f)]
    return [r for r in rows if len(r) > 2]  # more than epoch and step


@pytest.fixture
def no_timing(monkeypatch):
    """Serving latencies and the report's figure take seconds and are not compared: skipped."""
    from kd_lightning.app import cost, report

    monkeypatch.setattr(cost, "latency_ms", lambda net, example, batch=1, **kwargs: {"median": 1.0, "iqr": 0.0,
                                                                                  "repeats": 1, "batch": batch})
    monkeypatch.setattr(report, "plot_summary", lambda *args, **kwargs: None)


def results(summary: dict) -> dict:
    return {k: v for k, v in summary["student"].items() if k not in TIMING}


@pytest.mark.slow
@pytest.mark.parametrize("family,overrides,stop", [("classifier", CLASSIFIER, 8), ("lm", LM, 5)])
def test_a_student_stopped_mid_epoch_and_resumed_ends_as_the_unbroken_run(tmp_path, no_timing, family, overrides,
                                                                          stop):
    if family == "lm":
        pytest.importorskip("tokenizers")
    unbroken = run(compose_config(tmp_path, *overrides, out="unbroken"))

    stopped = compose_config(tmp_path, *overrides, *killer(tmp_path, stop), out="stopped")
    with pytest.raises(SIGTERMException):
        run(stopped)
    out = Path(stopped.paths.output_dir)
    assert (tmp_path / "killed").read_text() == str(stop)
    assert (out / "student" / "checkpoints" / "interrupted.ckpt").is_file()
    early = logged(out)  # the stopped run's own rows; the resumed run's logger starts the file again
    stopped.resume = True
    resumed = run(stopped)

    a = torch.load(tmp_path / "unbroken" / "student" / "weights.pt", weights_only=True)
    b = torch.load(out / "student" / "weights.pt", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert results(resumed) == results(unbroken) and len(unbroken["student"]["val_curve"]) == 2
    # Every metric logged after the resume is the unbroken run's at the same step.
    ref, late = logged(tmp_path / "unbroken"), logged(out)
    assert late and late == [r for r in ref if int(r["step"]) >= stop]
    assert early == [r for r in ref if int(r["step"]) < stop] and early
    assert json.loads((out / "student" / "stage.json").read_text())["result"]["val_curve"] == \
        unbroken["student"]["val_curve"]
