"""A Hydra callback that collects every job's summary of a multirun into one table and plot."""
from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any, Dict, List, Optional

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from .. import io
from .report import flatten

log = logging.getLogger(__name__)


def collect(sweep_dir: Path, sweep_id: Optional[str] = None) -> List[Dict[str, Any]]:
    """One row per job of the sweep: its overrides, its status (and error line), then its metrics.

    With ``sweep_id``, only job directories whose ``job_status.json`` carries that id are listed, so
    jobs left in a reused sweep directory by an earlier sweep never appear; without it (a sweep
    directory made before job statuses existed) every job directory with a summary.json is listed.
    """
    from .rundir import JOB_STATUS, read_json

    rows = []
    job_dirs = [p for p in sweep_dir.iterdir() if p.is_dir() and ((p / JOB_STATUS).is_file()
                                                                 or (p / "summary.json").is_file())]
    for job_dir in sorted(job_dirs, key=lambda p: _job_order(p.name)):
        status = read_json(job_dir / JOB_STATUS)
        if sweep_id is not None and (status or {}).get("sweep_id") != sweep_id:
            continue
        summary_path = job_dir / "summary.json"
        row: Dict[str, Any] = {"job": job_dir.name, **job_overrides(job_dir)}
        summary = read_json(summary_path)  # None: missing or damaged, a failed job here rather than a crash
        ok = (status or {}).get("status", "ok") == "ok" and summary is not None
        row["status"] = "ok" if ok else "failed"
        if not ok:
            row["error"] = (status or {}).get("error") or ("no summary.json" if not summary_path.exists()
                                                          else f"{summary_path} is not readable JSON")
        else:
            row.update(flatten(summary))
        rows.append(row)
    return rows


def job_overrides(job_dir: Path) -> Dict[str, str]:
    """The command-line overrides of one job (``key -> value``), from Hydra's ``.hydra/overrides.yaml``."""
    out: Dict[str, str] = {}
    overrides_file = job_dir / ".hydra" / "overrides.yaml"
    if overrides_file.exists():
        for item in OmegaConf.load(overrides_file):
            key, _, value = str(item).partition("=")
            out[key.lstrip("+~")] = value
    return out


def _job_order(name: str):
    return (0, int(name)) if name.isdigit() else (1, name)


def write_sweep_summary(sweep_dir: Path, metric: str, sweep_id: Optional[str] = None) -> List[Dict[str, Any]]:
    rows = collect(sweep_dir, sweep_id)
    if not rows:
        log.warning("no summary.json under %s: nothing to collect", sweep_dir)
        return rows
    columns: List[str] = []
    for r in rows:
        columns += [c for c in r if c not in columns]
    with io.atomic_path(sweep_dir / "sweep_summary.csv") as tmp:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=columns)
            w.writeheader()
            w.writerows(rows)
    # Only what the sweep set is a parameter; derived results (speedup, kd_gain, ...) stay results.
    overridden = {k for r in rows for k in job_overrides(sweep_dir / r["job"])}
    swept = [c for c in columns if c in overridden and len({str(r.get(c)) for r in rows}) > 1]
    leaf = metric_leaf(metric) or "acc"
    shown = ["job", "status"] + swept + [c for c in (metric, f"teacher/{leaf}", f"baseline/{leaf}", f"student/{leaf}")
                                         if c in columns]
    if "error" in columns:
        shown.append("error")
    shown = list(dict.fromkeys(shown))
    md = ["| " + " | ".join(shown) + " |", "|" + "---|" * len(shown)]
    md += ["| " + " | ".join(_fmt(r.get(c)) for c in shown) + " |" for r in rows]
    io.write_text(sweep_dir / "sweep_summary.md", "\n".join(md) + "\n")
    try:
        plot_sweep(rows, swept, metric, sweep_dir / "sweep_summary.png")
    except Exception as err:  # never lose the table over a plot
        log.warning("could not draw sweep_summary.png: %s", err)
    return rows


def _fmt(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, float) else ("" if v is None else str(v))


# Metrics where a smaller value is better (their axis says so).
LOWER_IS_BETTER = ("ppl", "bpb", "loss", "ce", "nll")
# The smallest y range of the sweep plot: ten points on a 0-1 scale (accuracies, agreement, kd_gain), else
# a fifth of the largest value shown (perplexity, bits per byte); see honest_limits.
MIN_SPAN_BOUNDED, MIN_SPAN_RELATIVE = 0.10, 0.20


def metric_leaf(metric: str) -> Optional[str]:
    """``"acc"`` for ``student/acc``: the name the teacher and baseline carry too (None for any other key)."""
    stage, _, leaf = metric.partition("/")
    return leaf if stage == "student" and leaf else None


def lower_is_better(metric: str) -> bool:
    return metric.rsplit("/", 1)[-1] in LOWER_IS_BETTER or metric.endswith("_ppl")


def reference_values(rows: List[Dict[str, Any]], metric: str) -> Dict[str, float]:
    """The teacher's and the labels-only baseline's value of ``metric`` (``student/<m>``), each the mean over the
    finished jobs that report it (jobs of one sweep share them unless the sweep changes the teacher or data)."""
    leaf = metric_leaf(metric)
    refs: Dict[str, float] = {}
    for stage in ("teacher", "baseline") if leaf else ():
        values = [float(r[f"{stage}/{leaf}"]) for r in rows if isinstance(r.get(f"{stage}/{leaf}"), (int, float))]
        if values:
            refs[stage] = sum(values) / len(values)
    return refs


def honest_limits(values: List[float], metric: str) -> tuple:
    """The y range of the sweep plot: it holds every value (students and reference lines) and spans at least
    ``MIN_SPAN_BOUNDED`` (0.1, ten points) for a metric on a 0-1 scale and at least ``MIN_SPAN_RELATIVE`` (a
    fifth) of the largest magnitude otherwise, so that 0.3 points of accuracy do not fill the plot. When no value
    is negative the range starts at 0 or above, and on a 0-1 scale it ends at 1 or below."""
    lo, hi = min(values), max(values)
    bounded = not lower_is_better(metric) and -1.0 <= lo and hi <= 1.0
    span = max(hi - lo, MIN_SPAN_BOUNDED if bounded else MIN_SPAN_RELATIVE * max(abs(lo), abs(hi), 1e-12))
    bottom = (lo + hi - span) / 2
    if lo >= 0:  # a window of the same span moved up, not below 0
        bottom = max(bottom, 0.0)
    if bounded and lo >= 0:  # ... nor above 1
        bottom = min(bottom, 1.0 - span)
    pad = 0.05 * span  # markers on the edge stay visible
    top = bottom + span + pad
    bottom -= pad
    if lo >= 0:
        bottom = max(bottom, 0.0)
    if bounded and lo >= 0:
        top = min(top, 1.0)
    return bottom, top


def sweep_figure(rows: List[Dict[str, Any]], swept: List[str], metric: str):
    """The optimized metric against each swept key, with the teacher and the labels-only baseline as labelled
    horizontal lines and the y range of :func:`honest_limits`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = swept or ["job"]
    rows = [r for r in rows if r.get("status", "ok") == "ok" and r.get(metric) is not None]
    refs = reference_values(rows, metric)
    ys = [float(r[metric]) for r in rows]
    limits = honest_limits(ys + list(refs.values()), metric) if ys else None
    direction = "lower is better" if lower_is_better(metric) else "higher is better"
    fig, axes = plt.subplots(1, len(keys), figsize=(4.5 * len(keys), 3.6), squeeze=False)
    for ax, key in zip(axes[0], keys):
        xs = [r.get(key) for r in rows]
        try:
            ax.scatter([float(x) for x in xs], ys, label="student", zorder=3)
        except (TypeError, ValueError):
            ax.scatter([str(x) for x in xs], ys, label="student", zorder=3)
        for stage, style in (("teacher", "--"), ("baseline", ":")):
            if stage in refs:
                label = "labels-only baseline" if stage == "baseline" else stage
                ax.axhline(refs[stage], linestyle=style, color="grey" if stage == "baseline" else "black",
                           label=f"{label} {refs[stage]:.4g}")
        ax.set(xlabel=key, ylabel=f"{metric} ({direction})")
        if limits is not None:
            ax.set_ylim(*limits)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.suptitle(f"{metric} across the sweep")
    fig.tight_layout()
    return fig


def plot_sweep(rows: List[Dict[str, Any]], swept: List[str], metric: str, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig = sweep_figure(rows, swept, metric)
    with io.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


class SweepSummary(Callback):
    """Gives the sweep an id when it starts; writes sweep_summary.csv/.md/.png with every job of this sweep
    (failed ones with their error line) when it ends, and exits non-zero if any job failed."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from .rundir import new_sweep_id

        new_sweep_id(Path(config.hydra.sweep.dir))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from .rundir import sweep_id

        sweep_dir = Path(config.hydra.sweep.dir)
        rows = write_sweep_summary(sweep_dir, config.get("optimized_metric") or "student/acc", sweep_id(sweep_dir))
        if rows:
            log.info("sweep summary of %d runs written to %s", len(rows), sweep_dir / "sweep_summary.md")
        failed = [r for r in rows if r.get("status") != "ok"]
        if failed:
            lines = "; ".join(f"job {r['job']}: {r.get('error')}" for r in failed[:3])
            raise SystemExit(f"kd-train: {len(failed)} of {len(rows)} sweep jobs failed ({lines}); "
                             f"see {sweep_dir / 'sweep_summary.md'}")
