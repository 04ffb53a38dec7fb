"""The documentation: the site builds with `mkdocs build --strict` (broken links, anchors, snippets and
docstring references all fail it), works offline, renders the API reference from the docstrings; every
Python snippet in README.md and docs/*.md runs as printed; the tables that mirror the code (the config groups,
the bad inputs) equal what they mirror.

Needs the docs tools of the dev extra (mkdocs-material, mkdocstrings[python]); it is not skipped
without them, so a missing tool shows up as a failure rather than as silently untested docs.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = ["README.md", *sorted(p.relative_to(ROOT).as_posix() for p in DOCS.glob("*.md"))]


# ------------------------------------------------------------------------------------------------ the site
@pytest.fixture(scope="module")
def site(tmp_path_factory) -> dict:
    site = tmp_path_factory.mktemp("docs") / "site"
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(ROOT / "mkdocs.yml"),
         "--site-dir", str(site)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return {"root": site, "pages": {p.relative_to(site).as_posix(): p.read_text(encoding="utf-8")
                                    for p in site.rglob("*.html")}}


def test_mkdocs_build_strict(site):
    pages = site["pages"]
    for page in ("index.html", "getting-started/index.html", "drop-in/index.html", "methods/index.html",
                 "language-models/index.html", "application/index.html", "configs/index.html",
                 "sweeps/index.html", "scaling/index.html", "vision/index.html", "bad-input/index.html",
                 "results/index.html", "examples/index.html", "layout/index.html", "api/index.html"):
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
    assert "TopicsDataModule" in pages["examples/index.html"]

    # The site refers only to files the project contains.
    for name, html in pages.items():
        for foreign in ("REFERENCE.md", "DESIGN.md", "../shared"):
            assert foreign not in html, f"{name} mentions {foreign}, which is not part of the project"


def test_the_home_page_introduces_both_families_with_an_example_each(site):
    home = re.sub(r"<[^>]+>", "", site["pages"]["index.html"])  # code is split into highlighted spans
    for code in ("DistillationModule(", "CausalLMDistillationModule(", "TokenKD(divergence=", "KD(temperature="):
        assert code in home, code


def test_the_site_works_offline(site):
    """No script, stylesheet or font is fetched from another host when a page is viewed, and the formulas
    are typeset by a KaTeX the site serves itself."""
    root, pages = site["root"], site["pages"]
    external = re.compile(r"<(script|link|img|iframe)\b[^>]*\b(src|href)=\"((?:https?:)?//[^\"]+)\"", re.I)
    for name, html in pages.items():
        for tag in external.finditer(html):
            assert tag.group(1).lower() == "link" and "stylesheet" not in tag.group(0) \
                and "preconnect" not in tag.group(0), f"{name} loads {tag.group(3)} from another host"
    for name in ("assets/katex/katex.min.js", "assets/katex/contrib/auto-render.min.js",
                 "assets/katex/katex.min.css", "javascripts/katex.js", "assets/katex/LICENSE"):
        assert (root / name).is_file() and (root / name).stat().st_size > 0, f"{name} is not in the built site"
    assert "renderMathInElement" in (root / "assets/katex/contrib/auto-render.min.js").read_text()
    # Every font the stylesheet names is served too.
    css = (root / "assets/katex/katex.min.css").read_text()
    fonts = re.findall(r"url\(([^)]+)\)", css)
    assert fonts and all((root / "assets/katex" / f.strip("'\"")).is_file() for f in fonts)
    # Pages with formulas load the local scripts.
    methods = pages["methods/index.html"]
    assert 'class="arithmatex"' in methods
    assert re.search(r'<script src="\.\./assets/katex/katex\.min\.js"', methods)
    assert re.search(r'<script src="\.\./javascripts/katex\.js"', methods)


# ------------------------------------------------------------------------------------- generated tables
def config_groups_table():
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import config_groups_table
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    return config_groups_table


def test_the_config_group_table_is_generated_from_conf():
    config_groups_table = globals()["config_groups_table"]()
    page = config_groups_table.page_table((DOCS / "configs.md").read_text())
    assert page == config_groups_table.table(), \
        "docs/configs.md's group table differs from conf/: run python scripts/config_groups_table.py --write"
    groups = config_groups_table.group_options()
    assert {"data", "teacher", "student", "distill", "trainer", "experiment"} <= set(groups)
    assert "lm_pydoc" in groups["experiment"] and "cnn1d_16" in groups["student"]


def test_the_config_group_table_walks_groups_at_every_depth_as_hydra_help_does(tmp_path):
    """A group inside a group (``distill/extra``) is listed; a directory that holds only groups is not."""
    for name in ("train.yaml", "distill/kd.yaml", "distill/extra/one.yaml", "wrappers/inner/x.yaml"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("{}\n")
    groups = config_groups_table().group_options(tmp_path)
    assert groups["distill"] == ["kd"] and groups["distill/extra"] == ["one"] and groups["wrappers/inner"] == ["x"]
    assert "wrappers" not in groups and not any(g.startswith("hydra") for g in groups)


@pytest.mark.slow
def test_the_config_group_table_lists_what_kd_train_help_lists(tmp_path):
    from app.helpers import cli

    proc = cli("kd-train", "--help", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    section = proc.stdout[proc.stdout.index("== Config groups"):proc.stdout.index("== Examples")]
    listed = {}
    for line in section.splitlines()[1:]:
        if line.strip():
            group, _, options = line.partition(": ")
            listed[group] = sorted(options.split(", "), key=str.lower)
    assert len(listed) >= 15
    assert listed == config_groups_table().group_options()
    table = config_groups_table().page_table((DOCS / "configs.md").read_text())
    assert re.findall(r"^\| `([^`]+)` \|", table, re.M) == sorted(listed)


def bad_input_rows():
    """The first cell (the input, in backticks) of every table row of the "Bad input" section."""
    text = (DOCS / "bad-input.md").read_text()
    section = text[text.index("## Bad input"):]
    section = section[:section.index("\n## ", 1)]
    rows = []
    for line in section.splitlines():
        match = re.match(r"^\| `([^`]+)` \|", line)
        if match:
            rows.append(match.group(1))
    return rows


def bad_inputs_under_test():
    """Every bad input the test suite exercises, keyed as the docs write it."""
    from app import (test_bad_checkpoints, test_bad_inputs, test_lm_faults, test_lm_pipeline, test_lm_policy,
                     test_lm_xtok)
    from data import test_text
    from models import test_local_files

    return [*test_bad_inputs.BAD, *test_bad_inputs.PATHS, *test_bad_inputs.CHOICES, *test_bad_inputs.IMAGES,
            *test_bad_checkpoints.CASES, *test_lm_pipeline.LM_BAD, *test_lm_policy.POLICY_BAD,
            *test_lm_faults.LM_CONFIG_BAD, *test_text.LM_DATA_BAD, *test_local_files.TEACHER_BAD,
            *test_lm_xtok.XTOK_BAD]


def test_the_bad_input_table_lists_exactly_the_tested_cases():
    rows, tested = bad_input_rows(), bad_inputs_under_test()
    assert len(rows) == len(set(rows)), [r for r in rows if rows.count(r) > 1]
    assert len(tested) == len(set(tested))
    untested = [r for r in rows if r not in tested]
    assert not untested, f"docs/bad-input.md rows with no test case: {untested}"
    missing = [c for c in tested if c not in rows]
    assert not missing, f"tested bad inputs docs/bad-input.md does not list: {missing}"
    assert len(rows) >= 60


# ------------------------------------------------------------------------------------------------ snippets
SKIP = re.compile(r"<!-- snippet: skip \(([^)]+)\) -->\s*$")
FENCE = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
# Snippets that show the shape of code in a user's own project and cannot run here, each with its reason.
# A new skip marker has to be added here too, so none slips in unnoticed.
EXPECTED_SKIPS = {
    ("docs/drop-in.md", "needs your trained teacher file, your student class and your data module"),
    ("docs/drop-in.md", "needs a checkpoint of your own run, your student class and teacher"),
    ("docs/drop-in.md", "needs your teacher checkpoint and your architecture classes"),
    ("docs/drop-in.md", "needs your fine-tuned Hugging Face checkpoints and a text data module"),
    ("docs/scaling.md", "needs 4 GPUs"),
    ("docs/scaling.md", "needs 2 GPUs"),
}
# Pages whose snippets train for real (about a minute each): end-to-end, so marked slow.
SLOW_PAGES = {"README.md"}


def snippets(page: str):
    """(line, code, skip reason or None) for each ```python block of ``page``."""
    text = (ROOT / page).read_text()
    found = []
    for match in FENCE.finditer(text):
        before = text[:match.start()].rstrip("\n").splitlines()
        skip = SKIP.match(before[-1]) if before else None
        found.append((text[:match.start()].count("\n") + 1, match.group(1), skip.group(1) if skip else None))
    return found


RUNNER = """
import json, sys, traceback
results = []
for page, line, code in json.load(sys.stdin):
    try:
        exec(compile(code, f"{page}:{line}", "exec"), {"__name__": "__snippet__"})
        results.append([page, line, None])
    except BaseException:
        results.append([page, line, traceback.format_exc(limit=-3)])
print("RESULTS" + json.dumps(results))
"""


def run_snippets(pages, directory: Path) -> dict:
    """Run every runnable snippet of ``pages`` on its own (a fresh namespace, so each carries its own
    imports) in one Python process in ``directory``; (page, line) -> the traceback of each failure or None."""
    runnable = [(page, line, code) for page in pages for line, code, reason in snippets(page) if reason is None]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]), KD_CACHE_DIR=str(directory / "cache"))
    proc = subprocess.run([sys.executable, "-c", RUNNER], input=json.dumps(runnable), cwd=directory, env=env,
                          capture_output=True, text=True, timeout=600)
    marker = [line for line in proc.stdout.splitlines() if line.startswith("RESULTS")]
    assert proc.returncode == 0 and marker, proc.stderr[-3000:]
    return {(page, line): error for page, line, error in json.loads(marker[-1][len("RESULTS"):])}


@pytest.fixture(scope="module")
def quick_snippet_results(tmp_path_factory) -> dict:
    return run_snippets([p for p in PAGES if p not in SLOW_PAGES], tmp_path_factory.mktemp("snippets"))


def assert_ran(results: dict, page: str) -> None:
    mine = {line: error for (p, line), error in results.items() if p == page}
    assert mine, f"no runnable snippet of {page} ran"
    failed = {line: error for line, error in mine.items() if error}
    assert not failed, "\n".join(f"{page}:{line}\n{error}" for line, error in failed.items())


def test_every_skipped_snippet_says_why_and_is_expected():
    skipped = {(page, reason) for page in PAGES for _, _, reason in snippets(page) if reason}
    assert skipped == EXPECTED_SKIPS


INCLUDE = re.compile(r'^\s*--8<-- "([^"]+)"\s*$')


def test_every_python_block_is_run_skipped_with_a_reason_or_an_example_script_the_tests_run():
    """No Python block escapes: an indented fence (inside an admonition) is the inclusion of a whole script of
    examples/, which tests/examples runs; every other block is one of the snippets above."""
    from examples.test_examples import SCRIPTS

    for page in PAGES:
        text = (ROOT / page).read_text()
        blocks = re.findall(r"^([ \t]*)```python\n(.*?)^[ \t]*```", text, re.S | re.M)
        top_level = [code for indent, code in blocks if not indent]
        assert len(top_level) == len(snippets(page)), page
        for indent, code in blocks:
            if indent:
                (included,) = [INCLUDE.match(line).group(1) for line in code.splitlines() if line.strip()]
                assert included.startswith("examples/") and Path(included).name in SCRIPTS, (page, included)


RUNNABLE = [p for p in PAGES if any(reason is None for _, _, reason in snippets(p))]


@pytest.mark.parametrize("page", [p for p in RUNNABLE if p not in SLOW_PAGES])
def test_the_snippets_of_a_page_run_as_printed(page, quick_snippet_results):
    assert_ran(quick_snippet_results, page)


@pytest.mark.slow
@pytest.mark.parametrize("page", sorted(SLOW_PAGES))
def test_the_snippets_that_train_run_as_printed(page, tmp_path):
    assert_ran(run_snippets([page], tmp_path), page)
