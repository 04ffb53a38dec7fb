"""The one home of the errors a kd-train / kd-eval / kd-export user sees."""
from __future__ import annotations


class ConfigError(ValueError):
    """A problem with the configuration, found before any training; its message says how to fix it."""


def root_cause(err: BaseException) -> str:
    """The innermost cause of ``err`` as ``Type: message`` (Hydra wraps constructor errors)."""
    while err.__cause__ is not None:
        err = err.__cause__
    return f"{type(err).__name__}: {err}"
