"""The README is a front page (the two commands first, one example per module family, the two headline
tables, links), and every kd-train / kd-eval / kd-export command line in the README and in docs/ composes:
the configs it names exist and every override applies, so the documentation cannot drift from conf/."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

import kd_lightning.app  # noqa: F401  registers the teacher=/student= model presets the commands name
from kd_lightning.app.confdir import CONFIG_DIR

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
TOOLS = {"kd-train": "train", "kd-eval": "eval", "kd-export": "export"}
FLAGS = {"-m", "--multirun", "--help", "--hydra-help", "--resolve"}
# The docs already use the config keys of the naming redesign (stored teacher outputs, teacher store). Until the
# branch that renames them in conf/ is merged, a command whose new key does not compose is composed again
# with today's key. Once the rename is in, the new keys compose directly and this map is never used.
RENAMED_TODAY = {
    "distill.teacher_outputs_fp16": "distill.teacher_cache_fp16",
    "distill.teacher_outputs_top_k": "distill.teacher_cache_top_k",
    "distill.teacher_outputs_tail": "distill.teacher_cache_tail",
    "distill.teacher_outputs": "distill.teacher_cache",
    "teacher_fit.use_store": "teacher_fit.use_cache",
}


def code_lines(path: Path):
    """(line, text) of every line inside a fenced code block of ``path``, backslash continuations joined."""
    in_code, pending = False, None
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.lstrip().startswith("```"):
            in_code = not in_code
            continue
        if not in_code:
            continue
        if pending:
            line = pending[1] + " " + line.strip()
            number = pending[0]
        if line.rstrip().endswith("\\"):
            pending = (number, line.rstrip()[:-1])
            continue
        pending = None
        yield number, line


# Inline `kd-...` spans in prose that are not meant to compose here, each with its reason (docs/bad-input.md's
# spans are bad on purpose; tests/app/test_bad_inputs.py runs them). A new one has to be added here.
INLINE_NOT_COMPOSED = {
    ("docs/tracking.md", "kd-train logger=csv_mlflow"): "names the logger file the page asks the reader to write",
}


def inline_lines(path: Path):
    """(line, text) of each inline code span outside fenced blocks that runs a tool with at least one argument."""
    if path.name == "bad-input.md":
        return
    in_code = False
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.lstrip().startswith("```"):
            in_code = not in_code
            continue
        if in_code:
            continue
        for span in re.findall(r"`(kd-(?:train|eval|export) [^`]+)`", line):
            if "<" not in span and (str(path.relative_to(ROOT)), span) not in INLINE_NOT_COMPOSED:
                yield number, span


def documented_commands():
    """(where, config name, overrides) for each tool command inside the code blocks of the README and docs,
    and in their inline code spans."""
    commands = []
    for path in PAGES:
        for number, line in [*code_lines(path), *inline_lines(path)]:
            words = line.split("#", 1)[0].strip()
            if not words:
                continue
            tokens = shlex.split(re.sub(r"<[^>]*>", "placeholder", words))  # <run dir>, <partition>
            # commands may follow an install ("... && kd-train") or sit alone on a line
            starts = [i for i, t in enumerate(tokens) if t in TOOLS]
            if not starts:
                continue
            tokens = tokens[starts[0]:]
            overrides, skip = [], False
            for t in tokens[1:]:
                if skip:
                    skip = False
                    continue
                if t == "--cfg":
                    skip = True
                    continue
                if t in FLAGS or t in ("&&", "|"):
                    continue
                key, _, value = t.partition("=")
                # a sweep lists choices: compose its first one (lists in brackets are one value)
                if "," in value and not value.startswith("["):
                    value = value.split(",")[0]
                overrides.append(f"{key}={value}")
            where = f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
            commands.append((where, TOOLS[tokens[0]], overrides))
    return commands


COMMANDS = documented_commands()


@pytest.mark.parametrize("page,span", list(INLINE_NOT_COMPOSED))
def test_each_inline_command_left_uncomposed_is_still_in_its_page_and_says_why(page, span):
    assert f"`{span}`" in (ROOT / page).read_text(), f"{page}: {span} is no longer in the page: drop it from the list"
    assert INLINE_NOT_COMPOSED[(page, span)].strip(), "each exception says why it cannot compose here"


def test_the_docs_document_every_tool():
    assert {name for _, name, _ in COMMANDS} == set(TOOLS.values())
    assert len(COMMANDS) >= 10
    readme_tools = {name for where, name, _ in COMMANDS if where.startswith("README.md")}
    assert readme_tools == set(TOOLS.values()), "the README shows each of kd-train, kd-eval and kd-export"


def compose_command(name: str, overrides: list):
    hydra_keys = any(o.startswith(("hydra.", "hydra/")) for o in overrides)
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(name, overrides=overrides, return_hydra_config=hydra_keys)


def renamed_today(override: str) -> str:
    key, _, value = override.partition("=")
    return f"{RENAMED_TODAY[key]}={value}" if key in RENAMED_TODAY else override


@pytest.mark.parametrize("where,name,overrides", COMMANDS, ids=[c[0][:80] for c in COMMANDS])
def test_documented_command_composes(where, name, overrides):
    try:
        cfg = compose_command(name, overrides)
    except Exception:
        if not any(o.partition("=")[0] in RENAMED_TODAY for o in overrides):
            raise
        overrides = [renamed_today(o) for o in overrides]
        cfg = compose_command(name, overrides)
    for override in overrides:
        key, _, value = override.lstrip("+").partition("=")
        if "." in key and not key.startswith("hydra") and not value.startswith(("[", "/")) and "placeholder" not in value:
            node = cfg
            for part in key.split("."):
                node = node[part]
            assert str(node).lower() == value.lower() or re.sub(r"\.0$", "", str(node)) == value, (where, key)


# ------------------------------------------------------------------------------------------- the front page
def test_the_readme_is_a_front_page():
    text = README.read_text()
    lines = text.splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines; move detail to a docs/ page"
    # The two commands come first; .ci/run greps the second one and runs it as CI.
    first_block = text[text.index("```bash\n") + len("```bash\n"):]
    first_block = first_block[:first_block.index("```")].splitlines()
    assert first_block == [
        "python3 -m venv .venv && . .venv/bin/activate && pip install -e . && kd-train",
        'python3 -m venv .venv && . .venv/bin/activate && pip install -e ".[dev]" && python -m pytest',
    ]
    assert text.index("```bash") < text.index("## ")
    ci = [line for line in lines if re.match(r"^python3 -m venv .*pytest", line)]
    assert ci == [first_block[1]]
    # One drop-in example per module family, and the two headline tables.
    for needle in ("from kd_lightning import ClassifierModule, DistillationModule",
                   "from kd_lightning import CausalLMDistillationModule",
                   "| **student (cnn1d_16, distilled)** |", "| **distilled student** (forward KL, T=1) |"):
        assert needle in text, needle


def test_the_readme_links_to_docs_pages_that_exist_and_are_in_the_site():
    nav = (ROOT / "mkdocs.yml").read_text()
    links = set(re.findall(r"\]\((docs/[^)#]+\.md)(?:#[^)]*)?\)", README.read_text()))
    assert len(links) >= 10, links
    for link in links:
        assert (ROOT / link).is_file(), link
        assert f": {link[len('docs/'):]}" in nav, f"{link} is not in the mkdocs nav"


def headline_blocks():
    text = README.read_text()
    return {name: text[text.index(f"[start:headline-{name}]"):text.index(f"[end:headline-{name}]")]
            for name in ("mnist1d", "lm")}


@pytest.mark.parametrize("name", ["mnist1d", "lm"])
def test_the_headline_tables_are_the_results_pages_tables(name):
    """The README's two tables are copies of rows on the Results page; neither can change alone."""
    results = (ROOT / "docs" / "results.md").read_text()
    rows = [line for line in headline_blocks()[name].splitlines() if line.startswith("| ") and "---" not in line]
    assert len(rows) >= 5
    for row in rows:
        assert row in results, f"README row not on the Results page: {row}"


# ---------------------------------------------------------------------------------- scripts and examples
def script_commands():
    """(where, script path, its --flags) for each ``python scripts/...`` or ``python examples/...`` command in
    the code blocks and inline spans of the README and docs (flags after a bare ``--`` are kd-train's)."""
    found = []
    for path in PAGES:
        spans = [(n, span) for n, line in enumerate(path.read_text().splitlines(), 1)
                 for span in re.findall(r"`(python (?:scripts|examples)/[^`]+)`", line)]
        for number, line in [*code_lines(path), *spans]:
            for match in re.finditer(r"python ((?:scripts|examples)/\S+\.py)([^#&|;]*)", line):
                args = match.group(2).split(" -- ")[0].split()
                found.append((f"{path.relative_to(ROOT)}:{number}: {match.group(0).strip()}", match.group(1),
                              [a.split("=")[0] for a in args if a.startswith("--")]))
    return found


SCRIPT_COMMANDS = script_commands()


def test_every_documented_script_command_names_a_script_and_flags_it_defines():
    assert len(SCRIPT_COMMANDS) >= 10
    for where, script, flags in SCRIPT_COMMANDS:
        source = ROOT / script
        assert source.is_file(), where
        text = source.read_text()
        for flag in flags:
            assert f'"{flag}"' in text or f"'{flag}'" in text, f"{where}: {script} defines no {flag}"


# ---------------------------------------------------------------------------------------------- YAML blocks
def yaml_blocks(path: Path):
    return re.findall(r"^```yaml\n(.*?)^```", path.read_text(), re.S | re.M)


def test_yaml_blocks_parse_and_say_what_conf_holds():
    from omegaconf import OmegaConf

    blocks = {path.name: [OmegaConf.create(b) for b in yaml_blocks(path)] for path in PAGES if yaml_blocks(path)}
    assert set(blocks) == {"sweeps.md", "tracking.md"}
    # the search docs/sweeps.md describes is the one conf/hparams_search holds
    search = OmegaConf.load(CONFIG_DIR / "hparams_search" / "mnist1d_optuna.yaml").hydra.sweeper.params
    assert OmegaConf.to_container(blocks["sweeps.md"][0]) == OmegaConf.to_container(search)
    # the loggers a combined logger file lists exist
    for choice in blocks["tracking.md"][0].defaults:
        assert (CONFIG_DIR / "logger" / f"{choice}.yaml").is_file(), choice
