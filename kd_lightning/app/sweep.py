"""A Hydra callback that collects every job's summary of a multirun into one table and plot."""
from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any, Dict, List

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from .. import io
from .report import flatten

log = logging.getLogger(__name__)


def collect(sweep_dir: Path) -> List[Dict[str, Any]]:
    """One row per job directory that holds a summary.json: its overrides, then its metrics."""
    rows = []
    for summary_path in sorted(sweep_dir.glob("*/summary.json"), key=lambda p: _job_order(p.parent.name)):
        job_dir = summary_path.parent
        row: Dict[str, Any] = {"job": job_dir.name}
        overrides_file = job_dir / ".hydra" / "overrides.yaml"
        if overrides_file.exists():
            for item in OmegaConf.load(overrides_file):
                key, _, value = str(item).partition("=")
                row[key.lstrip("+~")] = value
        row.update(flatten(json.loads(summary_path.read_text())))
        rows.append(row)
    return rows


def _job_order(name: str):
    return (0, int(name)) if name.isdigit() else (1, name)


def write_sweep_summary(sweep_dir: Path, metric: str) -> List[Dict[str, Any]]:
    rows = collect(sweep_dir)
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
    swept = [c for c in columns if "/" not in c and c != "job" and len({str(r.get(c)) for r in rows}) > 1]
    shown = ["job"] + swept + [c for c in (metric, "teacher/acc", "baseline/acc", "student/acc") if c in columns]
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


def plot_sweep(rows: List[Dict[str, Any]], swept: List[str], metric: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = swept or ["job"]
    fig, axes = plt.subplots(1, len(keys), figsize=(4.5 * len(keys), 3.6), squeeze=False)
    for ax, key in zip(axes[0], keys):
        xs = [r.get(key) for r in rows]
        ys = [r.get(metric) for r in rows]
        try:
            xs_num = [float(x) for x in xs]
            ax.scatter(xs_num, ys)
        except (TypeError, ValueError):
            ax.scatter([str(x) for x in xs], ys)
        ax.set(xlabel=key, ylabel=metric)
        ax.grid(alpha=0.3)
    fig.suptitle(f"{metric} across the sweep")
    fig.tight_layout()
    with io.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


class SweepSummary(Callback):
    """Writes sweep_summary.csv/.md/.png into the sweep directory when a multirun ends."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        rows = write_sweep_summary(sweep_dir, config.get("optimized_metric") or "student/acc")
        if rows:
            log.info("sweep summary of %d runs written to %s", len(rows), sweep_dir / "sweep_summary.md")
