#!/usr/bin/env python
"""Collect the CIFAR-100 runs of scripts/reproduce_cifar100.sh into a markdown table beside the
published numbers (RepDistiller README; DKD from the mdistiller README).

Every directory under the given roots that holds a ``summary.json`` (written by kd-train) is one run;
its pair and method are read from ``.hydra/overrides.yaml`` (``pair=<name>``, ``distill=<method>``), and
the published numbers from ``conf/pair/<name>.yaml``. Repeated runs of one cell are averaged.

    python scripts/collect_cifar100.py outputs/cifar100 [more roots ...] [--output table.md]
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Optional, Tuple

METHODS = ["kd", "fitnet", "at", "rkd", "crd", "dkd"]
METHOD_TITLES = {"kd": "KD", "fitnet": "FitNet", "at": "AT", "rkd": "RKD", "crd": "CRD", "dkd": "DKD"}
PAIR_DIR = Path(__file__).resolve().parent.parent / "conf" / "pair"


def load_pairs(pair_dir: Path = PAIR_DIR) -> Dict[str, dict]:
    """``conf/pair/<name>.yaml`` -> its teacher, student and published numbers (the one place they live)."""
    import yaml

    pairs = {}
    for path in sorted(pair_dir.glob("*.yaml")):
        node = yaml.safe_load(path.read_text())
        overrides = {k.split("/")[-1]: v for item in node["defaults"] if isinstance(item, dict) for k, v in item.items()}
        pairs[path.stem] = {"teacher": overrides["teacher"], "student": overrides["student"],
                            "published": node["pair"]["published"]}
    return pairs


def run_of(run_dir: Path) -> Tuple[Optional[str], Optional[str]]:
    """The ``pair=`` and ``distill=`` a kd-train run was given (from ``.hydra/overrides.yaml``)."""
    found: Dict[str, str] = {}
    overrides = run_dir / ".hydra" / "overrides.yaml"
    if overrides.is_file():
        for line in overrides.read_text().splitlines():
            m = re.search(r"\b(pair|distill)=([\w\-]+)", line)
            if m:
                found[m.group(1)] = m.group(2)
    return found.get("pair"), found.get("distill")


def percent(acc) -> Optional[float]:
    """Accuracies are stored as fractions; accept percentages too."""
    if acc is None:
        return None
    acc = float(acc)
    return 100.0 * acc if acc <= 1.0 else acc


def collect(roots: List[Path]) -> List[dict]:
    """One record per run: experiment name, accuracies in percent, and the teacher checkpoint used."""
    records = []
    for root in roots:
        for summary in sorted(root.rglob("summary.json")):
            try:
                data = json.loads(summary.read_text())
            except (OSError, ValueError) as err:
                print(f"collect_cifar100: skipping unreadable {summary}: {err}", file=sys.stderr)
                continue
            pair, method = run_of(summary.parent)
            record = {"pair": pair, "method": method, "dir": str(summary.parent)}
            for stage in ("teacher", "baseline", "student"):
                record[stage] = percent((data.get(stage) or {}).get("acc"))
            # Runs that reuse one teacher (cache or teacher.ckpt_path) must count it once.
            record["teacher_key"] = (data.get("teacher") or {}).get("ckpt_path") or record["dir"]
            records.append(record)
    return records


def fmt(values: List[float]) -> str:
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.2f}"
    return f"{mean:.2f} ± {statistics.stdev(values):.2f} (n={len(values)})"


def cell(values: List[float], published: float) -> str:
    if not values:
        return f"— / {published:.2f}"
    return f"**{fmt(values)}** / {published:.2f} ({statistics.fmean(values) - published:+.2f})"


def markdown(records: List[dict], pairs: Optional[Dict[str, dict]] = None) -> str:
    """One row per teacher -> student pair; each cell reads ``ours / published (difference)``."""
    pairs = load_pairs() if pairs is None else pairs
    header = ["teacher → student", "teacher", "student"] + [METHOD_TITLES[m] for m in METHODS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, pair in pairs.items():
        pub = pair["published"]
        teachers: Dict[str, float] = {}
        baselines: List[float] = []
        students: Dict[str, List[float]] = defaultdict(list)
        for r in records:
            if r["pair"] != name:
                continue
            if r["teacher"] is not None:
                teachers[r["teacher_key"]] = r["teacher"]
            if r["baseline"] is not None:
                baselines.append(r["baseline"])
            if r["student"] is not None and r["method"] in METHODS:
                students[r["method"]].append(r["student"])
        row = [f"{pair['teacher']} → {pair['student']}", cell(list(teachers.values()), pub["teacher"]),
               cell(baselines, pub["student"])]
        row += [cell(students[method], pub[method]) for method in METHODS]
        lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    lines.append("CIFAR-100 top-1 (%): **ours** / published (ours − published). Published: RepDistiller README "
                 "(teacher, student, KD, FitNet, AT, RKD, CRD), mdistiller README (DKD).")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Tabulate CIFAR-100 runs beside the published numbers.")
    p.add_argument("roots", nargs="+", type=Path, help="directories holding the runs (searched recursively)")
    p.add_argument("--output", type=Path, help="also write the table to this file")
    args = p.parse_args(argv)
    missing = [str(r) for r in args.roots if not r.is_dir()]
    if missing:
        p.error(f"not a directory: {', '.join(missing)}")
    records = collect(args.roots)
    if not records:
        print(f"collect_cifar100: no summary.json under {', '.join(map(str, args.roots))}", file=sys.stderr)
    table = markdown(records)
    print(table, end="")
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
