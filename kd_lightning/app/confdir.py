"""Where the Hydra configs are: the checkout's ``conf/`` or, from a wheel, the packaged copy."""
from pathlib import Path

_package = Path(__file__).resolve().parent.parent
_checkout = _package.parent / "conf"
CONFIG_DIR = _checkout if (_checkout / "train.yaml").is_file() else _package / "conf"

_RUN_ID = {}


def run_id() -> str:
    """This process's id for directory names: its PID and 4 random hex digits, fixed for the process."""
    import os
    import secrets

    pid = os.getpid()
    if pid not in _RUN_ID:
        _RUN_ID[pid] = f"{pid}-{secrets.token_hex(2)}"
    return _RUN_ID[pid]


def register_resolvers() -> None:
    """``${kd_run_id:}`` (used by conf/hydra/default.yaml). Called by the entry points, never on import."""
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("kd_run_id"):
        OmegaConf.register_new_resolver("kd_run_id", run_id, use_cache=False)
