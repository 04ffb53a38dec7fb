"""``kd-eval``: re-test a saved student on the test split and print its measurements (a classifier: accuracy;
a language model: perplexity and bits per byte)."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict

import hydra
import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig

from .. import io
from .confdir import CONFIG_DIR, set_run_id
from .quiet import quiet_known_noise

log = logging.getLogger(__name__)


def evaluate(cfg: DictConfig) -> Dict[str, Any]:
    from .build import build_datamodule
    from .checkpoint import load_student
    from .tasks import task_for

    net, cfg = load_student(cfg)
    task = task_for(cfg.get("task"))
    L.seed_everything(cfg.seed, workers=True)
    datamodule = task.saved_student_data(cfg, build_datamodule(cfg.data))
    trainer = instantiate(cfg.trainer, logger=False, enable_checkpointing=False,
                          default_root_dir=cfg.paths.output_dir)
    metrics, line = task.evaluate(net, datamodule, trainer)
    result = {"ckpt_path": str(cfg.ckpt_path), "task": task.name, **metrics}
    io.write_json(Path(cfg.paths.output_dir) / "eval.json", result)
    print(f"{line}  ({cfg.ckpt_path})")
    return result


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="eval")
def _main(cfg: DictConfig) -> float:
    from .errors import ConfigError

    try:
        result = evaluate(cfg)
        return result.get("test/acc", result.get("test/ppl"))
    except ConfigError as err:
        raise SystemExit(f"kd-eval: error: {err}") from None


def main() -> None:
    import sys

    from .confdir import unknown_group_choice

    from .checks import renamed_key_in

    bad_choice = unknown_group_choice(sys.argv[1:]) or renamed_key_in(sys.argv[1:])
    if bad_choice:
        raise SystemExit(f"kd-eval: error: {bad_choice}")
    quiet_known_noise()
    set_run_id()
    _main()


if __name__ == "__main__":
    main()
