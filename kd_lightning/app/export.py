"""``kd-export``: write the deployable student alone (a classifier: ONNX or TorchScript; a language model: a
Hugging Face directory, plus ONNX where it exports) and check its outputs."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict

import hydra
from omegaconf import DictConfig

from .confdir import CONFIG_DIR, set_run_id
from .quiet import quiet_known_noise

log = logging.getLogger(__name__)


def export(cfg: DictConfig) -> Dict[str, Any]:
    """The saved student in a deployable form, by its task (the checkpoint's config names it): a classifier
    as one ONNX or TorchScript file, a language model as a Hugging Face directory (plus ONNX where it
    exports); the written model's outputs are checked against the checkpoint's."""
    from .build import build_datamodule
    from .checkpoint import load_student
    from .checks import EXPORT_FORMATS, check_export_format
    from .tasks import task_for

    fmt = str(cfg.format).lower()
    if fmt not in EXPORT_FORMATS:  # before the checkpoint is read; its family narrows the choice below
        check_export_format(str(cfg.format))
    net, cfg = load_student(cfg)
    net.eval()
    task = task_for(cfg.get("task"))
    output = str(cfg.output) if cfg.get("output") else None
    return task.export(net, task.saved_student_data(cfg, build_datamodule(cfg.data)), Path(str(cfg.ckpt_path)), output, fmt,
                       float(cfg.atol), float(cfg.rtol), merged=bool(cfg.get("merged", False)))


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="export")
def _main(cfg: DictConfig) -> None:
    from .errors import ConfigError

    try:
        export(cfg)
    except (ConfigError, RuntimeError) as err:
        raise SystemExit(f"kd-export: error: {err}") from None


def main() -> None:
    import sys

    from .confdir import unknown_group_choice

    from .checks import renamed_key_in

    bad_choice = unknown_group_choice(sys.argv[1:]) or renamed_key_in(sys.argv[1:])
    if bad_choice:
        raise SystemExit(f"kd-export: error: {bad_choice}")
    quiet_known_noise()
    set_run_id()
    _main()


if __name__ == "__main__":
    main()
