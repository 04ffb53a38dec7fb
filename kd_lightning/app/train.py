"""``kd-train``: the Hydra entry point for the whole distillation process."""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Optional

import hydra
from omegaconf import DictConfig

from .confdir import CONFIG_DIR, set_run_id
from .errors import ConfigError, root_cause
from .quiet import quiet_known_noise

log = logging.getLogger(__name__)


def _hydra_job() -> Optional[dict]:
    """``{"multirun": bool, "sweep_dir": Path}`` when running under Hydra, else None."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return None
    hc = HydraConfig.get()
    return {"multirun": hc.mode == RunMode.MULTIRUN, "sweep_dir": Path(hc.sweep.dir),
            "overrides": list(hc.overrides.task)}


def interrupted_message(out: Path, in_fit: bool = True) -> str:
    """The one line a SIGTERM or Ctrl-C ends kd-train with: what was kept and the command that continues."""
    from .interrupt import signal_name

    kept = ("the running stage saved a resumable checkpoint" if in_fit
            else "finished stages are kept and nothing half-written was left")
    return (f"kd-train: interrupted by {signal_name()}; {kept} in {out}. Continue with the same command plus "
            f"hydra.run.dir={out} resume=true")


def run_task(cfg: DictConfig) -> Optional[float]:
    """One kd-train job. In a multirun a failing job is recorded (``job_status.json``) and returns NaN, so
    the other jobs run and the sweep summary lists it; a single run fails with one line."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from ..data.imagefolder import UnreadableImageError
    from . import rundir
    from .interrupt import Interrupted, signal_name
    from .pipeline import run
    from .report import flatten

    job = _hydra_job()
    multirun = bool(job and job["multirun"])
    sweep = rundir.sweep_id(job["sweep_dir"]) if multirun else None
    out = Path(cfg.paths.output_dir)
    try:
        if job is not None:
            rundir.claim(cfg)
        summary = run(cfg)
        metric = cfg.get("optimized_metric")
        value = None
        if metric:
            flat = flatten(summary)
            if metric not in flat:
                raise ConfigError(f"optimized_metric={metric!r} is not in the summary; choose one of {sorted(flat)}")
            value = float(flat[metric])
    except (SIGTERMException, Interrupted) as err:
        # Lightning stopped the fit and InterruptCheckpoint saved the stage, or the signal came between
        # fits (SigtermGuard): stop the process (and a sweep), never with status 0.
        if job is not None:
            rundir.write_job_status(out, "interrupted", sweep, error=signal_name(), overrides=job["overrides"])
        raise SystemExit(interrupted_message(out, in_fit=isinstance(err, SIGTERMException))) from None
    except (ConfigError, UnreadableImageError, FloatingPointError) as err:
        # One clear line instead of a traceback: the message names the problem and the fix (a diverging
        # stage: FiniteLossCheck names the term and the step).
        log.error("%s", err)
        if not multirun:
            raise SystemExit(f"kd-train: error: {err}") from None
        rundir.write_job_status(out, "failed", sweep, error=f"kd-train: error: {err}", overrides=job["overrides"])
        return math.nan
    except Exception as err:
        unwritable = rundir.write_error(err)  # a full disk or a read-only directory: one line naming the path
        if unwritable and not multirun:
            raise SystemExit(f"kd-train: error: {unwritable}") from None
        if not multirun:
            raise
        log.exception("job failed")
        rundir.write_job_status(out, "failed", sweep, error=unwritable or root_cause(err), overrides=job["overrides"])
        return math.nan
    if job is not None:
        rundir.write_job_status(out, "ok", sweep, overrides=job["overrides"], value=value)
    return value


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
def _main(cfg: DictConfig) -> Optional[float]:
    return run_task(cfg)


def main() -> None:
    import sys

    from .checks import renamed_key_in
    from .confdir import unknown_group_choice
    from .interrupt import Interrupted, SigtermGuard, signal_name

    bad_choice = unknown_group_choice(sys.argv[1:]) or renamed_key_in(sys.argv[1:])
    if bad_choice:
        raise SystemExit(f"kd-train: error: {bad_choice}")
    quiet_known_noise()
    set_run_id()
    with SigtermGuard():
        try:
            _main()
        except Interrupted:  # between run_task and the end of Hydra's own bookkeeping
            raise SystemExit(f"kd-train: interrupted by {signal_name()}; run the same command again with resume=true "
                             "(and hydra.run.dir=<its run directory>) to continue") from None


if __name__ == "__main__":
    main()
