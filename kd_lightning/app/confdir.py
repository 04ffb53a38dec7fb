"""Where the Hydra configs are: the checkout's ``conf/`` or, from a wheel, the packaged copy."""
from pathlib import Path

_package = Path(__file__).resolve().parent.parent
_checkout = _package.parent / "conf"
CONFIG_DIR = _checkout if (_checkout / "train.yaml").is_file() else _package / "conf"

def set_run_id() -> None:
    """Give this process its own default run/sweep directory: ``KD_RUN_ID`` (read by conf/hydra/default.yaml
    as ``${oc.env:KD_RUN_ID,}``) becomes ``_<pid>-<4 random hex digits>``. Called by the entry points, never
    on import; a Lightning DDP child (LOCAL_RANK > 0) keeps its parent's value so all ranks share one
    directory. Without it (configs composed by other code) the directory name is just the time."""
    import os
    import secrets

    if os.environ.get("LOCAL_RANK", "0") in ("", "0") or "KD_RUN_ID" not in os.environ:
        os.environ["KD_RUN_ID"] = f"_{os.getpid()}-{secrets.token_hex(2)}"
