"""Where the Hydra configs are: the checkout's ``conf/`` or, from a wheel, the packaged copy."""
from pathlib import Path

_here = Path(__file__).resolve().parent
_checkout = _here.parent / "conf"
CONFIG_DIR = _checkout if (_checkout / "train.yaml").is_file() else _here / "conf"
