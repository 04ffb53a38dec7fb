#!/usr/bin/env python
"""Every classifier method of conf/distill/ under one protocol, ranked: one `kd-train -m` multirun.

    python scripts/method_table.py --seeds 1 2 3                  # MNIST-1D, cnn1d_128 -> cnn1d_16 (~45 min, 2 cores)
    python scripts/method_table.py --seeds 1 2 3 --pair resnet32x4_resnet8x4 --recipe cifar100   # data + a GPU
    python scripts/method_table.py --methods kd dkd --seeds 1 -- trainer.max_epochs=2             # a subset, extra overrides

The protocol (docs/results.md gives it in full): one data set and one train/validation split (``data.seed``
fixed), one teacher trained once with its own seed (``teacher_fit.seed``) and shared by every job through
kd-train's teacher store, for each seed the same student initialization (kd-train seeds before building the
student), the same optimizer, schedule, epochs and augmentation, each method at its yaml's defaults (the
papers'). The labels-only student is the row ``labels_only``. Which methods apply is decided from the
built losses (those of the classifier family), not from a list kept here.

Writes into ``--out``: ``method_table.md`` (the table), ``method_table.json`` (per-job figures), ``method_table.png``
(accuracy with its spread per method), and the multirun itself under ``sweep/``. Cost columns come from each
job's ``student/step_cost.json`` (kd_lightning.step_cost.StepCost): median seconds per training step and peak
memory, both relative to KD, and the parameters the loss adds (adapters, learned temperatures).
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = "labels_only"
KD = "kd"

# MNIST-1D: the default pair on the plain data set (no transfer set, so every row sees the same samples),
# Adam lr 1e-2, a per-step warm-up + cosine sized to each stage, the final weights tested (the cosine ends at lr 0).
MNIST1D_PROTOCOL = ["~experiment", "data=mnist1d", "data.seed=0", "optim=adam_warmup_cosine", "trainer.max_epochs=30",
                    "teacher_fit.max_epochs=40", "test_ckpt=last"]
# Always: one shared teacher, no per-job baseline (labels_only is a row), quiet jobs, the cost callback.
COMMON = ["teacher_fit.seed=0", "baseline.enabled=false", "trainer.enable_progress_bar=false", "logger=none",
          "+callbacks.step_cost._target_=kd_lightning.step_cost.StepCost"]


def protocol(pair: Optional[str], recipe: Optional[str]) -> List[str]:
    if pair is None and recipe is None:
        return list(MNIST1D_PROTOCOL)
    return [o for o in (f"pair={pair}" if pair else None, f"recipe={recipe}" if recipe else None) if o]


def applies_to_classifiers(loss: Any) -> bool:
    """True for a loss of the classifier family: read from the loss's declared ``families`` (or ``family``);
    where a loss declares neither, token losses are the language-model ones."""
    families = getattr(loss, "families", None)
    if families is not None:
        return "classifier" in {str(getattr(f, "value", f)).lower() for f in families}
    family = getattr(loss, "family", None)
    if family is not None:
        return str(getattr(family, "value", family)).lower() in ("classifier", "classification")
    from kd_lightning.losses import TokenKD

    return not isinstance(loss, TokenKD)


def classifier_methods(overrides: Sequence[str]) -> List[str]:
    """The conf/distill options whose losses build for this protocol and belong to the classifier family."""
    from hydra import compose, initialize_config_dir

    from kd_lightning.app.build import build_loss
    from kd_lightning.app.confdir import CONFIG_DIR

    names = sorted(p.stem for p in (Path(CONFIG_DIR) / "distill").glob("*.yaml"))
    out = []
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        for name in names:
            if name == REFERENCE:
                continue
            cfg = compose("train", overrides=[o for o in overrides if not o.startswith("+callbacks")] + [f"distill={name}"])
            if applies_to_classifiers(build_loss(cfg.distill)):
                out.append(name)
    return out


def run_sweep(methods: Sequence[str], seeds: Sequence[int], overrides: Sequence[str], sweep_dir: Path) -> None:
    exe = Path(sys.executable).parent / "kd-train"
    cmd = [str(exe), "-m", f"distill={','.join([REFERENCE, *methods])}", f"seed={','.join(map(str, seeds))}",
           *overrides, f"hydra.sweep.dir={sweep_dir}"]
    print(" ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)


def job_rows(sweep_dir: Path) -> List[Dict[str, Any]]:
    """One row per finished job: method, seed, accuracies and the student stage's step cost."""
    from kd_lightning.app.sweep import collect

    rows = []
    for r in collect(sweep_dir):
        if r.get("status") != "ok":
            rows.append({"method": r.get("distill"), "seed": r.get("seed"), "error": r.get("error", "failed")})
            continue
        cost_file = sweep_dir / r["job"] / "student" / "step_cost.json"
        cost = json.loads(cost_file.read_text()) if cost_file.is_file() else {}
        rows.append({"method": r["distill/name"], "seed": int(r["seed"]), "acc": r["student/acc"],
                     "teacher_acc": r["teacher/acc"], "params": r.get("student/params"), **cost})
    return rows


def _mean_sd(values: List[float]):
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _ratio(value: Optional[float], ref: Optional[float]) -> Optional[float]:
    return None if value is None or not ref else value / ref


def aggregate(rows: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Per method: accuracy mean ± std over seeds, gain over labels-only, gap to the teacher, relative cost.

    Cost figures are medians over the method's seeds; ``time_vs_kd`` and ``memory_vs_kd`` divide them by KD's.
    Sorted by mean accuracy, best first.
    """
    ok = [r for r in rows if "acc" in r]
    by: Dict[str, List[Dict[str, Any]]] = {}
    for r in ok:
        by.setdefault(r["method"], []).append(r)

    def median_of(method: str, key: str) -> Optional[float]:
        vals = [r[key] for r in by.get(method, []) if r.get(key) is not None]
        return statistics.median(vals) if vals else None

    teacher = statistics.mean(r["teacher_acc"] for r in ok) if ok else math.nan
    ref = statistics.mean(r["acc"] for r in by[REFERENCE]) if REFERENCE in by else None
    out = []
    for method, rs in by.items():
        mean, sd = _mean_sd([r["acc"] for r in rs])
        out.append({"method": method, "seeds": sorted(r["seed"] for r in rs), "acc_mean": mean, "acc_std": sd,
                    "gain_vs_labels_only": None if ref is None else mean - ref, "gap_to_teacher": teacher - mean,
                    "step_s": median_of(method, "step_s"), "peak_mib": median_of(method, "peak_mib"),
                    "time_vs_kd": _ratio(median_of(method, "step_s"), median_of(KD, "step_s")),
                    "memory_vs_kd": _ratio(median_of(method, "peak_mib"), median_of(KD, "peak_mib")),
                    "added_params": int(median_of(method, "loss_params") or 0)})
    failed = sorted({f"{r['method']} (seed {r['seed']})" for r in rows if "acc" not in r})
    out.sort(key=lambda r: -r["acc_mean"])
    if failed:
        out.append({"method": "failed jobs", "failed": failed})
    return out


def _pct(v: Optional[float], signed: bool = False) -> str:
    return "–" if v is None else (f"{100 * v:+.1f}" if signed else f"{100 * v:.1f}")


def _x(v: Optional[float]) -> str:
    return "–" if v is None else f"{v:.2f}×"


def markdown(table: List[Dict[str, Any]], teacher: Optional[float], command: str) -> str:
    lines = [f"Command: `{command}`", "",
             f"Teacher test accuracy: {_pct(teacher)}%. Accuracy in %, mean ± std over seeds; gain and gap in points.",
             "",
             "| rank | method | test acc | gain vs labels-only | gap to teacher | s/step | time vs KD | memory vs KD "
             "| added params |",
             "|---|---|---|---|---|---|---|---|---|"]
    rank = 0
    for r in table:
        if "failed" in r:
            lines += ["", "Failed jobs: " + ", ".join(r["failed"])]
            continue
        rank += 1
        step = "–" if r["step_s"] is None else f"{r['step_s'] * 1000:.1f} ms"
        lines.append(f"| {rank} | {r['method']} | {_pct(r['acc_mean'])} ± {_pct(r['acc_std'])} "
                     f"| {_pct(r['gain_vs_labels_only'], True)} | {_pct(r['gap_to_teacher'])} | {step} "
                     f"| {_x(r['time_vs_kd'])} | {_x(r['memory_vs_kd'])} | {r['added_params']:,} |")
    return "\n".join(lines) + "\n"


def plot(table: List[Dict[str, Any]], teacher: Optional[float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in table if "failed" not in r][::-1]
    fig, ax = plt.subplots(figsize=(7, 0.3 * len(rows) + 1.2))
    colors = ["tab:gray" if r["method"] == REFERENCE else "tab:blue" for r in rows]
    ax.barh([r["method"] for r in rows], [100 * r["acc_mean"] for r in rows],
            xerr=[100 * r["acc_std"] for r in rows], color=colors)
    if teacher is not None:
        ax.axvline(100 * teacher, color="tab:red", linestyle="--", label="teacher")
        ax.legend(loc="lower right")
    lo = min(100 * (r["acc_mean"] - r["acc_std"]) for r in rows)
    ax.set_xlim(max(0.0, lo - 2.0), 100 * max([teacher or 0.0] + [r["acc_mean"] + r["acc_std"] for r in rows]) + 1.0)
    ax.set_xlabel("test accuracy (%)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Optional[Sequence[str]] = None) -> List[Dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--pair", default=None, help="a conf/pair option (default: the MNIST-1D protocol)")
    parser.add_argument("--recipe", default=None, help="a conf/recipe option, e.g. cifar100")
    parser.add_argument("--methods", nargs="+", default=None, help="a subset of conf/distill (default: all that apply)")
    parser.add_argument("--out", default="outputs/method_table")
    parser.add_argument("overrides", nargs="*", help="extra kd-train overrides, after --")
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()
    overrides = protocol(args.pair, args.recipe) + COMMON + list(args.overrides)
    methods = args.methods or classifier_methods(overrides)
    if KD not in methods:
        methods = [KD, *methods]  # the cost columns are relative to KD
    run_sweep(methods, args.seeds, overrides, out / "sweep")
    rows = job_rows(out / "sweep")
    table = aggregate(rows)
    ok = [r for r in rows if "acc" in r]
    teacher = statistics.mean(r["teacher_acc"] for r in ok) if ok else None
    command = "python scripts/method_table.py " + " ".join(argv if argv is not None else sys.argv[1:])
    (out / "method_table.md").write_text(markdown(table, teacher, command.strip()))
    (out / "method_table.json").write_text(json.dumps({"overrides": overrides, "jobs": rows, "table": table}, indent=1))
    if ok:
        plot(table, teacher, out / "method_table.png")
    print((out / "method_table.md").read_text())
    return table


if __name__ == "__main__":
    main()
