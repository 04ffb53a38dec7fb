"""kd_lightning/app/report.py: one table format for both families — the printed table and summary.md come from
the same cells, for a classifier run (accuracy) and a language-model run (perplexity, bits per byte)."""
from __future__ import annotations

import pytest

from kd_lightning.app.report import report_table, write_report
from kd_lightning.app.stage import StageResult


def _results(lm: bool):
    def stage(name, params, value, **kw):
        common = dict(name=name, params=params, size_bytes=4 * params, latency_ms=0.25, wall_s=3.0, **kw)
        if lm:
            return StageResult(acc=None, ppl=value, bpb=value / 100, agreement=0.5, tokens_per_s=12345.0, **common)
        return StageResult(acc=value, macs_per_sample=2 * params, latency_iqr_ms=0.01, **common)

    if lm:
        return (stage("teacher", 844_928, 112.25, source="trained"), stage("baseline", 80_112, 122.03),
                stage("student", 80_112, 119.5))
    return (stage("teacher", 150_000, 0.9213, source="store"), stage("baseline", 5_210, 0.8811),
            stage("student", 5_210, 0.9034))


@pytest.mark.parametrize("lm", [False, True], ids=["classifier", "causal_lm"])
def test_both_families_print_a_formatted_table_and_write_the_same_cells_to_summary_md(lm, tmp_path, capsys,
                                                                                        monkeypatch):
    monkeypatch.setenv("COLUMNS", "60")  # a narrow console: the table is drawn at its full width all the same
    teacher, baseline, student = _results(lm)
    summary = write_report(tmp_path, teacher, baseline, student,
                           {"distill": {"name": "kd"}, "data": "Tiny", "seed": 0}, lm=lm)
    printed = capsys.readouterr().out
    header, rows, notes = report_table(summary, lm)
    assert [r[0] for r in rows] == [f"teacher ({teacher.source})", "baseline", "student"]
    assert ("perplexity" in header) == lm and ("acc" in header) != lm
    # the console: a drawn table (no Markdown pipes), with every cell whole and the sentences under it
    assert "|---" not in printed and "━" in printed and "…" not in printed
    assert "kd-lightning: kd on Tiny" in printed
    for row in rows:
        for cell in row[1:]:
            assert cell in printed, (cell, printed)
    assert notes and all(note in " ".join(printed.split()) for note in notes)
    # summary.md: the same header, rows and sentences, as a Markdown table
    md = (tmp_path / "summary.md").read_text().splitlines()
    assert md[0] == "| " + " | ".join(header) + " |"
    assert md[2:2 + len(rows)] == ["| " + " | ".join(row) + " |" for row in rows]
    assert all(note in md for note in notes)
    if lm:
        assert "112.25" in rows[0] and "119.50" in rows[2]
    else:
        assert "92.13%" in rows[0] and "90.34%" in rows[2]
