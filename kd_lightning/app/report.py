"""The run report: summary.json, summary.md, a printed table and summary.png."""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

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


def stage_results(teacher: StageResult, baseline: Optional[StageResult], student: StageResult) -> Dict[str, Any]:
    """What every summary starts with, whatever the task: the three stages and the size and speed ratios."""
    return {
        "teacher": teacher.to_dict(),
        "baseline": baseline.to_dict() if baseline is not None else None,
        "student": student.to_dict(),
        "compression": round(teacher.params / max(student.params, 1), 3),
        "size_ratio": round(teacher.size_bytes / max(student.size_bytes, 1), 3),
        "speedup": round(teacher.latency_ms / max(student.latency_ms, 1e-9), 3),
    }


def build_summary(teacher: StageResult, baseline: Optional[StageResult], student: StageResult) -> Dict[str, Any]:
    summary: Dict[str, Any] = {
        **stage_results(teacher, baseline, student),
        # The deterministic figure beside the measured latency ratios: multiply-accumulates per sample.
        "mac_ratio": (round(teacher.macs_per_sample / max(student.macs_per_sample, 1), 3)
                      if teacher.macs_per_sample and student.macs_per_sample else None),
        "speedup_serving": (round(teacher.latency_serving_ms_per_sample
                                  / max(student.latency_serving_ms_per_sample, 1e-12), 3)
                            if teacher.latency_serving_ms_per_sample and student.latency_serving_ms_per_sample else None),
        "acc_retained": round(student.acc / teacher.acc, 4) if teacher.acc > 0 else None,
        "kd_gain": round(student.acc - baseline.acc, 4) if baseline is not None else None,
    }
    keep = ("acc_retained", "kd_gain")  # None says "no baseline" / "no accuracy" there
    return {k: v for k, v in summary.items() if v is not None or k in keep}


# ------------------------------------------------------------------------ the table, for both families
def _num(v: Any, fmt: str) -> str:
    return "—" if v is None else format(v, fmt)


def _latency(s: Dict[str, Any]) -> str:
    spread = f" ± {s['latency_iqr_ms']:.3f}" if s.get("latency_iqr_ms") is not None else ""
    return f"{s['latency_ms']:.3f}{spread}"


# Each family's columns: header -> the cell of one stage's summary. One renderer (report_table) serves both.
CLASSIFIER_COLUMNS = (
    ("acc", lambda s: f"{100 * s['acc']:.2f}%"),
    ("params", lambda s: f"{s['params']:,}"),
    ("MACs/sample", lambda s: _num(s.get("macs_per_sample"), ",")),
    ("size (KiB)", lambda s: f"{s['size_bytes'] / 1024:.1f}"),
    ("batch-1 CPU ms (median ± IQR)", _latency),
    ("wall (s)", lambda s: f"{s['wall_s']:.1f}"),
)
LM_COLUMNS = (
    ("perplexity", lambda s: _num(s.get("ppl"), ".2f")),
    ("bits/byte", lambda s: _num(s.get("bpb"), ".3f")),
    ("agreement", lambda s: _num(s.get("agreement"), ".3f")),
    ("params", lambda s: f"{s['params']:,}"),
    ("size (KiB)", lambda s: f"{s['size_bytes'] / 1024:.1f}"),
    ("tokens/s (CPU)", lambda s: _num(s.get("tokens_per_s"), ",.0f")),
    ("wall (s)", lambda s: f"{s['wall_s']:.1f}"),
)


def report_table(summary: Dict[str, Any], lm: bool = False) -> Tuple[List[str], List[List[str]], List[str]]:
    """The run's table as text cells: ``(header, one row per stage, the sentences under it)``, for a
    classifier (accuracy) or a language model (perplexity, bits per byte). Both the printed table and
    summary.md are drawn from it."""
    columns = LM_COLUMNS if lm else CLASSIFIER_COLUMNS
    header = ["model"] + [name for name, _ in columns]
    rows = []
    for stage in STAGES:
        s = summary.get(stage)
        if s:
            label = stage if stage != "teacher" else f"teacher ({s.get('source', '')})"
            rows.append([label] + [cell(s) for _, cell in columns])
    return header, rows, (lm_notes if lm else classifier_notes)(summary)


def classifier_notes(summary: Dict[str, Any]) -> List[str]:
    return [f"Compression {summary['compression']:.1f}x in parameters"
            + (f", {summary['mac_ratio']:.1f}x in multiply-accumulates" if summary.get("mac_ratio") else "")
            + f", accuracy retained {100 * (summary['acc_retained'] or 0):.1f}%"
            + (f", gain over the labels-only baseline {100 * summary['kd_gain']:+.2f} points."
               if summary.get("kd_gain") is not None else ".")]


def lm_notes(summary: Dict[str, Any]) -> List[str]:
    notes = []
    own = [(stage, (summary.get(stage) or {}).get("teacher_ppl_of_samples")) for stage in STAGES]
    if any(v is not None for _, v in own):
        notes.append("Teacher perplexity of each model's own samples from the held-out prompts (lower: closer to "
                     "what the teacher would write): " + ", ".join(f"{stage} {v:.2f}" for stage, v in own
                                                                     if v is not None) + ".")
    gap = summary.get("gap_closed")
    if summary.get("tokenizers"):
        names = summary["tokenizers"]
        notes.append(f"The teacher reads the text with {names['teacher']}, the baseline and the student with "
                     f"{names['student']}: compare them by bits per byte (perplexities count different tokens).")
        notes.append(f"Compression {summary['compression']:.1f}x in parameters"
                     + (f"; distillation changes the student's bits per byte by {-summary['bpb_gain']:+.4f} against "
                        f"the labels-only baseline and closes {100 * gap:.1f}% of the baseline-teacher gap (in bits "
                        "per byte)." if gap is not None else "."))
    else:
        notes.append(f"Compression {summary['compression']:.1f}x in parameters"
                     + (f"; distillation changes the student's perplexity by {-summary['ppl_gain']:+.2f} against the "
                        f"labels-only baseline and closes {100 * gap:.1f}% of the baseline-teacher gap (in "
                        "cross-entropy)." if gap is not None else "."))
    stored = (summary.get("student") or {}).get("teacher_outputs")
    if stored:
        notes.append(f"The student trained on the teacher's stored top-{stored['top_k']} next-token distributions "
                     f"({stored['bytes_per_token']:.0f} bytes per token on disk, against "
                     f"{stored['dense_fp32_bytes_per_token']:,} for dense fp32 logits); no teacher ran in its stage.")
    return notes


def report_markdown(summary: Dict[str, Any], lm: bool = False) -> str:
    """summary.md: the table of :func:`report_table` in Markdown, its sentences, and (language models) the
    sampled continuations."""
    header, rows, notes = report_table(summary, lm)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    for note in notes:
        lines += ["", note]
    if lm:
        lines += lm_samples(summary)
    return "\n".join(lines) + "\n"


def print_report(summary: Dict[str, Any], lm: bool = False) -> None:
    """The table of :func:`report_table` on the console (a rich table as wide as it needs), then its sentences."""
    from rich.console import Console
    from rich.measure import Measurement
    from rich.table import Table

    header, rows, notes = report_table(summary, lm)
    distill = (summary.get("distill") or {}).get("name")
    table = Table(title=f"kd-lightning: {distill} on {summary.get('data')}" if distill else "kd-lightning")
    for i, name in enumerate(header):
        table.add_column(name, justify="left" if i == 0 else "right", no_wrap=True)
    for row in rows:
        table.add_row(*row)
    console = Console()
    # rich squeezes a table wider than the console into ellipses ("12,3…"); a narrow console (or a captured
    # stream, 80 columns) gets the table whole instead, and its lines run on.
    natural = Measurement.get(console, console.options.update_width(10_000), table).maximum
    if natural > console.width:
        console = Console(width=natural)
    console.print(table)
    for note in notes:
        console.print(note, soft_wrap=True)


def plot_summary(summary: Dict[str, Any], path: Path, lm: bool = False) -> None:
    """The validation curve of each stage, and the test metric against size: accuracy for classifiers,
    held-out perplexity (log scale, lower is better) for language models."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scale = 1.0 if lm else 100.0
    name = "held-out perplexity" if lm else "accuracy (%)"
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for stage in STAGES:
        s = summary.get(stage)
        if s and s.get("val_curve"):
            ax1.plot(range(1, len(s["val_curve"]) + 1), [scale * v for v in s["val_curve"]], marker=".", label=stage)
    ax1.set(xlabel="epoch", ylabel=f"validation {name}", title=f"Validation {name.split(' (')[0]} per stage")
    if lm:
        ax1.set_yscale("log")
    ax1.grid(alpha=0.3)
    if ax1.lines:
        ax1.legend()
    for stage, marker in zip(STAGES, ("o", "s", "*")):
        s = summary.get(stage)
        value = (s or {}).get("ppl" if lm else "acc")
        if value:
            ax2.scatter(s["params"], scale * value, marker=marker, s=120, label=stage)
            ax2.annotate(f"{stage} {value:.1f}" if lm else stage, (s["params"], scale * value),
                         textcoords="offset points", xytext=(6, 4))
    ax2.set_xscale("log")
    ax2.set(xlabel="parameters (log scale)", ylabel=f"test {name}" + (" (lower is better)" if lm else ""),
            title=f"{'Perplexity' if lm else 'Accuracy'} against size")
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    with io.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def write_report(out: Path, teacher: StageResult, baseline: Optional[StageResult], student: StageResult,
                 extra: Optional[Dict[str, Any]] = None, lm: bool = False, write: bool = True) -> Dict[str, Any]:
    """summary.json, summary.md and summary.png in ``out``, and the table on the console (``lm``: the
    language-model tables, perplexity and bits per byte); ``write=False`` (a DDP rank other than 0) only
    returns the summary."""
    if lm:
        summary = build_lm_summary(teacher, baseline, student, by_bytes=bool((extra or {}).get("tokenizers")))
    else:
        summary = build_summary(teacher, baseline, student)
    summary.update(extra or {})
    if not write:
        return summary
    io.write_json(out / "summary.json", summary)
    io.write_text(out / "summary.md", report_markdown(summary, lm))
    try:
        plot_summary(summary, out / "summary.png", lm)
    except Exception as err:  # a plotting problem must not lose a finished run
        log.warning("could not draw summary.png: %s", err)
    print_report(summary, lm)
    return summary


# ------------------------------------------------------------------------------ language models
def build_lm_summary(teacher: StageResult, baseline: Optional[StageResult], student: StageResult,
                     by_bytes: bool = False) -> Dict[str, Any]:
    """Perplexity and bits per byte of the three models; ``gap_closed`` is the share of the baseline's
    excess cross-entropy over the teacher that distillation removes: (ln b - ln s) / (ln b - ln t).
    ``by_bytes`` (teacher and student with different tokenizers, whose perplexities count different tokens):
    the same share in bits per byte, (b - s) / (b - t), and ``bpb_gain`` instead of ``ppl_gain``."""
    summary: Dict[str, Any] = {**stage_results(teacher, baseline, student), "ppl_gain": None, "gap_closed": None}
    if by_bytes:
        del summary["ppl_gain"]
        summary["bpb_gain"] = None
        if baseline is not None and baseline.bpb and student.bpb and teacher.bpb:
            summary["bpb_gain"] = round(baseline.bpb - student.bpb, 4)
            if abs(baseline.bpb - teacher.bpb) > 1e-9:
                summary["gap_closed"] = round((baseline.bpb - student.bpb) / (baseline.bpb - teacher.bpb), 4)
    elif baseline is not None and baseline.ppl and student.ppl and teacher.ppl:
        summary["ppl_gain"] = round(baseline.ppl - student.ppl, 3)
        excess = math.log(baseline.ppl) - math.log(teacher.ppl)
        if abs(excess) > 1e-9:
            summary["gap_closed"] = round((math.log(baseline.ppl) - math.log(student.ppl)) / excess, 4)
    if summary["baseline"] is None:
        del summary["baseline"]
    return summary


def lm_samples(summary: Dict[str, Any]) -> List[str]:
    """summary.md's section of sampled continuations (none without prompts)."""
    prompts = summary.get("prompts") or []
    if not prompts:
        return []
    lines = ["", "## Sampled continuations", ""]
    for i, prompt in enumerate(prompts):
        lines += [f"**{prompt}**", ""]
        for stage in STAGES:
            texts = (summary.get(stage) or {}).get("samples") or []
            if i < len(texts):
                lines.append(f"- {stage}: `{prompt}`{_inline(texts[i])}")
        lines.append("")
    return lines


def _inline(text: str) -> str:
    """A continuation on one line of Markdown: newlines shown as ⏎, backticks kept out of code spans."""
    return " " + text.replace("\n", " ⏎ ").replace("`", "'").strip()
