"""The run report: summary.json, summary.md, a printed table and summary.png."""
from __future__ import annotations

import logging
import math
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


def markdown_table(summary: Dict[str, Any]) -> str:
    lines = [
        "| model | acc | params | MACs/sample | size (KiB) | CPU latency, batch 1 (ms, median ± IQR) | wall (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for stage in STAGES:
        s = summary.get(stage)
        if not s:
            continue
        label = stage if stage != "teacher" else f"teacher ({s.get('source', '')})"
        macs = f"{s['macs_per_sample']:,}" if s.get("macs_per_sample") else "—"
        spread = f" ± {s['latency_iqr_ms']:.3f}" if s.get("latency_iqr_ms") is not None else ""
        lines.append(f"| {label} | {100 * s['acc']:.2f}% | {s['params']:,} | {macs} | {s['size_bytes'] / 1024:.1f} | "
                     f"{s['latency_ms']:.3f}{spread} | {s['wall_s']:.1f} |")
    lines.append("")
    lines.append(f"Compression {summary['compression']:.1f}x in parameters"
                 + (f", {summary['mac_ratio']:.1f}x in multiply-accumulates" if summary.get("mac_ratio") else "")
                 + ", "
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
    for col in ("model", "acc", "params", "MACs", "size KiB", "ms/sample", "wall s"):
        table.add_column(col, justify="right" if col != "model" else "left")
    for stage in STAGES:
        s = summary.get(stage)
        if s:
            table.add_row(stage, f"{100 * s['acc']:.2f}%", f"{s['params']:,}", f"{s.get('macs_per_sample') or 0:,}",
                          f"{s['size_bytes'] / 1024:.1f}", f"{s['latency_ms']:.3f}", f"{s['wall_s']:.1f}")
    Console().print(table)
    Console().print(markdown_table(summary).strip().splitlines()[-1])


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
    io.write_text(out / "summary.md", (lm_markdown if lm else markdown_table)(summary))
    try:
        plot_summary(summary, out / "summary.png", lm)
    except Exception as err:  # a plotting problem must not lose a finished run
        log.warning("could not draw summary.png: %s", err)
    if lm:
        print(lm_markdown(summary, samples=False))
    else:
        print_table(summary)
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


def _num(v: Any, fmt: str) -> str:
    return "" if v is None else format(v, fmt)


def lm_markdown(summary: Dict[str, Any], samples: bool = True) -> str:
    lines = ["| model | perplexity | bits/byte | agreement | params | size (KiB) | tokens/s (CPU) | wall (s) |",
             "|---|---|---|---|---|---|---|---|"]
    for stage in STAGES:
        s = summary.get(stage)
        if not s:
            continue
        label = stage if stage != "teacher" else f"teacher ({s.get('source', '')})"
        lines.append(f"| {label} | {_num(s.get('ppl'), '.2f')} | {_num(s.get('bpb'), '.3f')} | "
                     f"{_num(s.get('agreement'), '.3f')} | {s['params']:,} | {s['size_bytes'] / 1024:.1f} | "
                     f"{_num(s.get('tokens_per_s'), ',.0f')} | {s['wall_s']:.1f} |")
    own = [(stage, (summary.get(stage) or {}).get("teacher_ppl_of_samples")) for stage in STAGES]
    if any(v is not None for _, v in own):
        lines += ["", "Teacher perplexity of each model's own samples from the held-out prompts (lower: closer to "
                  "what the teacher would write): " + ", ".join(f"{stage} {v:.2f}" for stage, v in own if v is not None)
                  + "."]
    lines.append("")
    gap = summary.get("gap_closed")
    if summary.get("tokenizers"):
        names = summary["tokenizers"]
        lines.append(f"The teacher reads the text with {names['teacher']}, the baseline and the student with "
                     f"{names['student']}: compare them by bits per byte (perplexities count different tokens).")
        lines.append(f"Compression {summary['compression']:.1f}x in parameters"
                     + (f"; distillation changes the student's bits per byte by {-summary['bpb_gain']:+.4f} against "
                        f"the labels-only baseline and closes {100 * gap:.1f}% of the baseline-teacher gap (in bits "
                        "per byte)." if gap is not None else "."))
    else:
        lines.append(f"Compression {summary['compression']:.1f}x in parameters"
                     + (f"; distillation changes the student's perplexity by {-summary['ppl_gain']:+.2f} against the "
                        f"labels-only baseline and closes {100 * gap:.1f}% of the baseline-teacher gap (in "
                        "cross-entropy)." if gap is not None else "."))
    stored = (summary.get("student") or {}).get("teacher_outputs")
    if stored:
        lines.append(f"The student trained on the teacher's stored top-{stored['top_k']} next-token distributions "
                     f"({stored['bytes_per_token']:.0f} bytes per token on disk, against "
                     f"{stored['dense_fp32_bytes_per_token']:,} for dense fp32 logits); no teacher ran in its stage.")
    prompts = summary.get("prompts") or []
    if samples and prompts:
        lines += ["", "## Sampled continuations", ""]
        for i, prompt in enumerate(prompts):
            lines.append(f"**{prompt}**")
            lines.append("")
            for stage in STAGES:
                s = summary.get(stage) or {}
                texts = s.get("samples") or []
                if i < len(texts):
                    lines.append(f"- {stage}: `{prompt}`{_inline(texts[i])}")
            lines.append("")
    return "\n".join(lines) + "\n"


def _inline(text: str) -> str:
    """A continuation on one line of Markdown: newlines shown as ⏎, backticks kept out of code spans."""
    return " " + text.replace("\n", " ⏎ ").replace("`", "'").strip()
