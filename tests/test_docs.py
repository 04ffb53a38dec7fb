"""The documentation site builds with `mkdocs build --strict` (broken links, anchors, snippets and
docstring references all fail it) and renders the API reference from the package's docstrings.

Needs the docs tools of the dev extra (mkdocs-material, mkdocstrings[python]); it is not skipped
without them, so a missing tool shows up as a failure rather than as silently untested docs.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_mkdocs_build_strict(tmp_path):
    site = tmp_path / "site"
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(ROOT / "mkdocs.yml"),
         "--site-dir", str(site)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"

    pages = {p.relative_to(site).as_posix(): p.read_text(encoding="utf-8") for p in site.rglob("*.html")}
    for page in ("index.html", "getting-started/index.html", "drop-in/index.html", "methods/index.html",
                 "language-models/index.html", "configs/index.html", "sweeps/index.html", "scaling/index.html",
                 "results/index.html", "examples/index.html", "api/index.html"):
        assert page in pages, f"{page} was not built"

    # The API reference is rendered from the docstrings, not left empty.
    api = pages["api/index.html"]
    for anchor in ("kd_lightning.module.DistillationModule", "kd_lightning.classifier.ClassifierModule",
                   "kd_lightning.taps.FeatureTaps", "kd_lightning.losses.KD", "kd_lightning.losses.AT",
                   "kd_lightning.losses.functional.kd_loss", "kd_lightning.losses.functional.dkd_loss",
                   "kd_lightning.augment.Mixup", "kd_lightning.data.MNIST1DDataModule", "kd_lightning.models.CNN1D"):
        assert f'id="{anchor}"' in api, f"the API page has no entry for {anchor}"

    # The examples page carries the scripts themselves (pymdownx.snippets).
    assert "UpsampledDigits" in pages["examples/index.html"]

    # The site refers only to files the project contains.
    for name, html in pages.items():
        for foreign in ("REFERENCE.md", "DESIGN.md", "../shared"):
            assert foreign not in html, f"{name} mentions {foreign}, which is not part of the project"
