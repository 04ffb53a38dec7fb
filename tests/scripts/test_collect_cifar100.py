"""scripts/collect_cifar100.py: the collector tabulates runs beside the published CIFAR-100 numbers."""
import os

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def test_collector_tabulates_runs_beside_the_published_numbers(tmp_path):
    import importlib.util
    import json

    spec = importlib.util.spec_from_file_location(
        "collect_cifar100", os.path.join(ROOT, "scripts", "collect_cifar100.py"))
    collector = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(collector)

    def write(pair, method, student, baseline=None, seed=42):
        run = tmp_path / f"seed{seed}" / pair / method
        (run / ".hydra").mkdir(parents=True)
        (run / ".hydra" / "overrides.yaml").write_text(f"- pair={pair}\n- recipe=cifar100\n- distill={method}\n")
        summary = {"teacher": {"acc": 0.79, "ckpt_path": "/cache/t.ckpt"}, "student": {"acc": student}}
        if baseline is not None:
            summary["baseline"] = {"acc": baseline}
        (run / "summary.json").write_text(json.dumps(summary))

    write("resnet32x4_resnet8x4", "kd", 0.7330, baseline=0.7250)
    write("resnet32x4_resnet8x4", "kd", 0.7350, seed=7)
    write("resnet32x4_resnet8x4", "dkd", 0.7600)
    write("wrn_40_2_wrn_16_2", "dkd", 0.7600)
    out = tmp_path / "table.md"
    assert collector.main([str(tmp_path), "--output", str(out)]) == 0
    row = next(line for line in out.read_text().splitlines() if line.startswith("| resnet32x4 → resnet8x4"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == "**79.00** / 79.42 (-0.42)"  # one teacher, counted once
    assert cells[2] == "**72.50** / 72.50 (+0.00)"
    assert cells[3].startswith("**73.40 ± 0.14 (n=2)** / 73.33")
    assert cells[8] == "**76.00** / 76.32 (-0.32)" and cells[4] == "— / 73.50"
    wrn = next(line for line in out.read_text().splitlines() if line.startswith("| wrn_40_2 → wrn_16_2"))
    assert "**76.00** / 76.23" in wrn
