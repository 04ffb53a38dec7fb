"""What the command-line tools hide: notes about things kd-lightning does on purpose, and ads.

Called by the entry points only; importing kd_lightning changes no warnings filter or logger.
"""
from __future__ import annotations

import logging
import warnings


# Lightning's rank-zero notes that say nothing about this run: product tips and hardware inventory.
_NOISE = ("Tip:", "GPU available:", "TPU available:", "HPU available:", "`Trainer.fit` stopped",
          "to estimate number of stepping batches")


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(n in message for n in _NOISE)


def quiet_known_noise() -> None:
    # Deprecations inside torch/Lightning that a kd-train user can do nothing about.
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"(torch|lightning|lightning_fabric)\b.*")
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"(torch|lightning|lightning_fabric)\b.*")
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
    # kd-train's training loaders resume mid-epoch exactly; kd_lightning.exact_resume.ExactResume warns, in
    # its own words, about a loader that does not.
    warnings.filterwarnings("ignore", message=r".*ended before the epoch ended and your dataloader is not resumable.*")
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_DropNoise())
    logging.getLogger("lightning.fabric.utilities.seed").setLevel(logging.WARNING)  # kd-train logs its seed
