"""The Hydra application: ``kd-train``, ``kd-eval``, ``kd-export`` and the staged process behind them.

Only this package imports Hydra and OmegaConf; the library (``kd_lightning`` outside ``app``) never
imports it. Importing it registers the ``teacher=`` / ``student=`` presets with Hydra's ConfigStore,
as Hydra applications do, so that every entry point and every compose sees them.
"""
from .presets import register_model_presets

register_model_presets()
