"""``kd-train``: the Hydra entry point for the whole distillation process."""
from __future__ import annotations

import logging
from typing import Optional

import hydra
from omegaconf import DictConfig

from .confdir import CONFIG_DIR
from .errors import ConfigError
from .quiet import quiet_known_noise

log = logging.getLogger(__name__)


def run_task(cfg: DictConfig) -> Optional[float]:
    from .pipeline import run
    from .report import flatten

    try:
        summary = run(cfg)
    except ConfigError as err:
        # One clear line instead of a traceback: the message names the problem and the fix.
        log.error("%s", err)
        raise SystemExit(f"kd-train: error: {err}") from None
    metric = cfg.get("optimized_metric")
    if not metric:
        return None
    flat = flatten(summary)
    if metric not in flat:
        raise SystemExit(f"kd-train: optimized_metric={metric!r} is not in the summary; choose one of {sorted(flat)}")
    return float(flat[metric])


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
def _main(cfg: DictConfig) -> Optional[float]:
    return run_task(cfg)


def main() -> None:
    quiet_known_noise()
    _main()


if __name__ == "__main__":
    main()
