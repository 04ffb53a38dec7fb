"""Every kd-train / kd-eval / kd-export command line in the README composes (the configs it names exist
and every override applies), so the documentation cannot drift from conf/."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from kd_lightning.app.confdir import CONFIG_DIR

README = Path(__file__).resolve().parents[1] / "README.md"
TOOLS = {"kd-train": "train", "kd-eval": "eval", "kd-export": "export"}
FLAGS = {"-m", "--multirun", "--help", "--hydra-help", "--resolve"}


def readme_commands():
    """(line, config name, overrides) for each tool command inside the README's code blocks."""
    commands, in_code = [], False
    for line in README.read_text().splitlines():
        if line.startswith("```"):
            in_code = not in_code
            continue
        words = line.split("#", 1)[0].strip()
        if not in_code or not words:
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
        commands.append((line.strip(), TOOLS[tokens[0]], overrides))
    return commands


COMMANDS = readme_commands()


def test_the_readme_documents_every_tool():
    assert {name for _, name, _ in COMMANDS} == set(TOOLS.values())
    assert len(COMMANDS) >= 10


@pytest.mark.parametrize("line,name,overrides", COMMANDS, ids=[c[0][:60] for c in COMMANDS])
def test_readme_command_composes(line, name, overrides):
    hydra_keys = any(o.startswith(("hydra.", "hydra/")) for o in overrides)
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(name, overrides=overrides, return_hydra_config=hydra_keys)
    for override in overrides:
        key, _, value = override.lstrip("+").partition("=")
        if "." in key and not key.startswith("hydra") and not value.startswith(("[", "/")) and "placeholder" not in value:
            node = cfg
            for part in key.split("."):
                node = node[part]
            assert str(node).lower() == value.lower() or re.sub(r"\.0$", "", str(node)) == value, (line, key)


def bad_input_rows():
    """The first cell (the input, in backticks) of every table row in the README's "### Bad input" section."""
    text = README.read_text()
    section = text[text.index("### Bad input"):]
    section = section[:section.index("\n### ", 1)]
    rows = []
    for line in section.splitlines():
        match = re.match(r"^\| `([^`]+)` \|", line)
        if match:
            rows.append(match.group(1))
    return rows


def bad_inputs_under_test():
    """Every bad input the test suite exercises, keyed as the README writes it."""
    from app import test_bad_checkpoints, test_bad_inputs

    cases = [*test_bad_inputs.BAD, *test_bad_inputs.PATHS, *test_bad_inputs.CHOICES, *test_bad_inputs.IMAGES,
             *test_bad_checkpoints.CASES]
    pytest.importorskip("transformers")
    pytest.importorskip("tokenizers")
    from app import test_lm_pipeline, test_lm_policy

    return cases + list(test_lm_pipeline.LM_BAD) + list(test_lm_policy.POLICY_BAD)


def test_the_bad_input_table_lists_exactly_the_tested_cases():
    rows, tested = bad_input_rows(), bad_inputs_under_test()
    assert len(rows) == len(set(rows)), [r for r in rows if rows.count(r) > 1]
    assert len(tested) == len(set(tested))
    untested = [r for r in rows if r not in tested]
    assert not untested, f"README rows with no test case: {untested}"
    missing = [c for c in tested if c not in rows]
    assert not missing, f"tested bad inputs the README does not list: {missing}"
    assert len(rows) >= 60
