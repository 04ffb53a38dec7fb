"""The Hydra application: ``kd-train``, ``kd-eval``, ``kd-export`` and the staged process behind them.

Only this package imports Hydra and OmegaConf; the library (``kd_lightning`` outside ``app``) never
imports it.
"""
