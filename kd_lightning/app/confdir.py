"""Where the Hydra configs are: the checkout's ``conf/`` or, from a wheel, the packaged copy."""
from pathlib import Path

_package = Path(__file__).resolve().parent.parent
_checkout = _package.parent / "conf"
CONFIG_DIR = _checkout if (_checkout / "train.yaml").is_file() else _package / "conf"
