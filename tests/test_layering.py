"""The house rules that keep the library safe to depend on: it never imports the application (or Hydra
and OmegaConf), it touches no private attribute of Lightning, torchmetrics or torch, and importing it
changes no global state."""
from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "kd_lightning"


def library_files():
    return [p for p in PACKAGE.rglob("*.py") if "app" not in p.relative_to(PACKAGE).parts]


def imported_modules(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            yield ("." * node.level) + (node.module or "")


def test_the_library_never_imports_the_application_hydra_or_omegaconf():
    offenders = [(str(p.relative_to(PACKAGE)), m) for p in library_files() for m in imported_modules(p)
                 if m.lstrip(".").startswith(("hydra", "omegaconf")) or "app" in m.lstrip(".").split(".")
                 or m.startswith("kd_lightning.app")]
    assert not offenders, offenders


# Attribute reads or writes like `trainer._x`, `self._trainer`, `fit_loop._x`, `metric._x` on objects of
# Lightning, torchmetrics or torch; a module's own private helpers are named after the module, not these.
PRIVATE = re.compile(r"\b(trainer|fit_loop|strategy|lightning_module|pl_module|self)\._(trainer|current_fx_name|"
                     r"data_source|results|logger_connector|cast_and_nan_check_input|fabric|device|dtype)\b")


def test_no_private_attribute_of_lightning_torchmetrics_or_torch_is_touched():
    hits = [f"{p.relative_to(PACKAGE)}:{i}: {line.strip()}" for p in PACKAGE.rglob("*.py")
            for i, line in enumerate(p.read_text().splitlines(), 1) if PRIVATE.search(line)]
    assert not hits, hits


def test_importing_kd_lightning_changes_no_global_state():
    code = (
        "import logging, warnings, torch\n"
        # the dependencies install filters of their own when imported: import them first
        "import lightning.pytorch, torchmetrics, sklearn.datasets, numpy, mnist1d, torch.utils.flop_counter\n"
        "before = (list(warnings.filters), torch.get_num_threads(), torch.initial_seed(),\n"
        "          {n: (l.level, list(l.filters)) for n, l in logging.root.manager.loggerDict.items()\n"
        "           if isinstance(l, logging.Logger)})\n"
        "import kd_lightning, kd_lightning.losses, kd_lightning.models, kd_lightning.cache, kd_lightning.lm\n"
        "after_loggers = {n: (l.level, list(l.filters)) for n, l in logging.root.manager.loggerDict.items()\n"
        "                 if isinstance(l, logging.Logger) and n in before[3]}\n"
        "assert list(warnings.filters) == before[0], 'warnings filters changed'\n"
        "assert torch.get_num_threads() == before[1] and torch.initial_seed() == before[2]\n"
        "assert after_loggers == before[3], 'a logger changed'\n"
        "print('unchanged')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "unchanged", out.stderr[-2000:]


def test_the_command_line_tools_quiet_what_they_know_to_be_noise():
    code = ("import warnings\nbefore = len(warnings.filters)\n"
            "from kd_lightning.app.quiet import quiet_known_noise\nquiet_known_noise()\n"
            "print(len(warnings.filters) > before)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.stdout.strip() == "True", out.stderr[-2000:]
