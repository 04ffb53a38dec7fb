"""The run report: summary.json, summary.md, a printed table and summary.png."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, Optional

from .. import io
from .stage import StageResult

log = logging.getLogger(__name__)
STAGES = ("teacher", "baseline", "student")


def flatten(d: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
    """``{"student": {"acc": 0.9}}`` -> ``{"student/acc": 0.9}`` (lists are left out)."""
    out: Dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "/"))
        elif not isinstance(v, list):
            out[key] = v
    return out


def build_summary(teacher: StageResult, baseline: Optional[StageResult], student: StageResult) -> Dict[str, Any]:
    summary: Dict[str, Any] = {
        "teacher": teacher.to_dict(),
        "baseline": baseline.to_dict() if baseline is not None else None,
        "student": student.to_dict(),
        "compression": round(teacher.params / max(student.params, 1), 3),
        "size_ratio": round(teacher.size_bytes / max(student.size_bytes, 1), 3),
        "speedup": round(teacher.latency_ms / max(student.latency_ms, 1e-9), 3),
        "acc_retained": round(student.acc / teacher.acc, 4) if teacher.acc > 0 else None,
        "kd_gain": round(student.acc - baseline.acc, 4) if baseline is not None else None,
    }
    if summary["baseline"] is None:
        del summary["baseline"]
    return summary


def markdown_table(summary: Dict[str, Any]) -> str:
    lines = [
        "| model | acc | params | size (KiB) | CPU latency (ms/sample) | wall (s) |",
        "|---|---|---|---|---|---|",
    ]
    for stage in STAGES:
        s = summary.get(stage)
        if not s:
            continue
        label = stage if stage != "teacher" else f"teacher ({s.get('source', '')})"
        lines.append(f"| {label} | {100 * s['acc']:.2f}% | {s['params']:,} | {s['size_bytes'] / 1024:.1f} | "
                     f"{s['latency_ms']:.3f} | {s['wall_s']:.1f} |")
    lines.append("")
    lines.append(f"Compression {summary['compression']:.1f}x in parameters, "
                 f"accuracy retained {100 * (summary['acc_retained'] or 0):.1f}%"
                 + (f", gain over the labels-only baseline {100 * summary['kd_gain']:+.2f} points."
                    if summary.get("kd_gain") is not None else "."))
    return "\n".join(lines) + "\n"


def print_table(summary: Dict[str, Any]) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # pragma: no cover - rich is a dependency
        print(markdown_table(summary))
        return
    table = Table(title=f"kd-lightning: {summary['distill']['name']} on {summary['data']}")
    for col in ("model", "acc", "params", "size KiB", "ms/sample", "wall s"):
        table.add_column(col, justify="right" if col != "model" else "left")
    for stage in STAGES:
        s = summary.get(stage)
        if s:
            table.add_row(stage, f"{100 * s['acc']:.2f}%", f"{s['params']:,}", f"{s['size_bytes'] / 1024:.1f}",
                          f"{s['latency_ms']:.3f}", f"{s['wall_s']:.1f}")
    Console().print(table)
    Console().print(markdown_table(summary).strip().splitlines()[-1])


def plot_summary(summary: Dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for stage in STAGES:
        s = summary.get(stage)
        if s and s.get("val_curve"):
            ax1.plot(range(1, len(s["val_curve"]) + 1), [100 * v for v in s["val_curve"]], marker=".", label=stage)
    ax1.set(xlabel="epoch", ylabel="validation accuracy (%)", title="Validation accuracy per stage")
    ax1.grid(alpha=0.3)
    if ax1.lines:
        ax1.legend()
    for stage, marker in zip(STAGES, ("o", "s", "*")):
        s = summary.get(stage)
        if s:
            ax2.scatter(s["params"], 100 * s["acc"], marker=marker, s=120, label=stage)
            ax2.annotate(stage, (s["params"], 100 * s["acc"]), textcoords="offset points", xytext=(6, 4))
    ax2.set_xscale("log")
    ax2.set(xlabel="parameters (log scale)", ylabel="test accuracy (%)", title="Accuracy against size")
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    with io.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def write_report(out: Path, teacher: StageResult, baseline: Optional[StageResult], student: StageResult,
                 extra: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """summary.json, summary.md and summary.png in ``out``, and the table on the console."""
    summary = build_summary(teacher, baseline, student)
    summary.update(extra or {})
    io.write_json(out / "summary.json", summary)
    io.write_text(out / "summary.md", markdown_table(summary))
    try:
        plot_summary(summary, out / "summary.png")
    except Exception as err:  # a plotting problem must not lose a finished run
        log.warning("could not draw summary.png: %s", err)
    print_table(summary)
    return summary
