"""Config nodes to objects: every builder here is one ``instantiate`` plus the one-line error a user sees."""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Tuple

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from ..losses import Compose, Loss
from ..teacher import load_teacher
from .errors import ConfigError, root_cause


def named_key(node: DictConfig, prefix: str, message: str) -> str:
    """``<prefix>.<key>=<value>`` for the key of ``node`` that a constructor's error ``message`` names first
    (``temperature must be ...``), so the user sees which setting to change; "" when none is named."""
    import re

    found = []
    for key in node:
        key = str(key)
        match = re.search(rf"(?<![\w.]){re.escape(key)}(?![\w])", message)
        if key.startswith("_") or match is None:
            continue
        try:
            value = node[key]
        except Exception:  # an interpolation that does not resolve here
            continue
        if not isinstance(value, DictConfig):
            found.append((match.start(), f"{prefix}.{key}={value!r}"))
    return min(found)[1] if found else ""


def build_loss(distill_cfg: DictConfig) -> Loss:
    """Every entry of ``distill.losses``, summed (one entry is returned as it is)."""
    entries = distill_cfg.get("losses") or {}
    try:
        losses = [instantiate(v) for v in entries.values() if v is not None]
    except Exception as err:
        cause = root_cause(err)
        key = named_key(distill_cfg, "distill", cause.split(": ", 1)[-1])
        raise ConfigError(f"{key + ': ' if key else ''}bad distill config ({distill_cfg.get('name')}): "
                          f"{cause}") from None
    if not losses:
        raise ConfigError("distill.losses is empty: choose a method, e.g. distill=kd")
    return losses[0] if len(losses) == 1 else Compose(losses)


def build_net(model_cfg: DictConfig, role: str) -> nn.Module:
    """The ``teacher`` or ``student`` network (``<role>.net``), loaded from ``<role>.ckpt_path`` when set."""
    preset = check_preset_arguments(model_cfg, role)
    try:
        net = instantiate(model_cfg.net)
    except Exception as err:  # hydra wraps constructor errors; keep the first useful line
        what = f"{role}.net ({preset})" if preset else f"{role}.net"
        raise ConfigError(f"could not build the {role} network from {what}: {root_cause(err)}") from None
    if model_cfg.get("ckpt_path"):
        try:
            net = load_teacher(model_cfg.ckpt_path, net)
        except (ValueError, FileNotFoundError) as err:
            raise ConfigError(f"{role}.ckpt_path: {err}") from None
    if model_cfg.get("lora"):  # LoRA adapters on the network just built, which becomes their frozen base
        from ..lm.lora import lora_student

        args = {k: v for k, v in OmegaConf.to_container(model_cfg.lora, resolve=True).items() if k != "export_merged"}
        try:
            net = lora_student(net, **args)
        except (ImportError, ValueError, TypeError) as err:
            raise ConfigError(f"{role}.lora: {root_cause(err)}") from None
    return net


_KINDS = ((bool, "true or false"), (int, "an integer"), (float, "a number"), (str, "a string"))


def _kind(default: Any) -> Optional[Tuple[type, str]]:
    for kind, words in _KINDS:
        if isinstance(default, kind):
            return kind, words
    return None


def _fits(value: Any, kind: type) -> bool:
    if kind is bool or isinstance(value, bool):
        return isinstance(value, bool) and kind is bool
    if kind is float:
        return isinstance(value, (int, float))
    return isinstance(value, kind)


def check_preset_arguments(model_cfg: DictConfig, role: str) -> Optional[str]:
    """For a registry preset (``create_model``): every ``<role>.net.<arg>`` must be an argument of the model's
    builder and of the type of the preset's own value. Returns the preset's name (None for other targets)."""
    import inspect

    from ..models import model_entry

    net_cfg = model_cfg.get("net")
    if not isinstance(net_cfg, DictConfig) or net_cfg.get("_target_") != "kd_lightning.models.create_model":
        return None
    name = str(net_cfg.get("model_name"))
    try:
        entry = model_entry(name)
    except ValueError as err:
        raise ConfigError(f"{role}.net.model_name: {err}") from None
    params = inspect.signature(entry.builder).parameters
    open_ended = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    defaults = entry.arguments()
    for key in net_cfg:
        key = str(key)
        if key.startswith("_") or key == "model_name" or key in entry.data_args:
            continue
        if key not in params and not open_ended:
            raise ConfigError(f"{role}.net.{key} is not an argument of the {name} model; its arguments are "
                              f"{', '.join(sorted(defaults))}")
        default = defaults.get(key)
        kind = _kind(default)
        if kind is None:
            continue
        try:
            value = OmegaConf.select(model_cfg, f"net.{key}")
        except Exception:  # an interpolation that does not resolve here: instantiate reports it
            continue
        if value is not None and not _fits(value, kind[0]):
            raise ConfigError(f"{role}.net.{key}={value!r} must be {kind[1]} (the {name} preset uses "
                              f"{default!r}); set e.g. {role}.net.{key}={default}")
    return name


def target_defaults(target: str) -> Dict[str, Any]:
    """The keyword defaults of ``target`` (a class: its ``__init__`` and, through ``**kwargs``, its bases')."""
    import inspect

    from hydra.utils import get_object

    obj = get_object(target)
    functions = [c.__init__ for c in obj.__mro__ if "__init__" in vars(c)] if isinstance(obj, type) else [obj]
    out: Dict[str, Any] = {}
    for fn in functions:
        if fn is object.__init__:
            break
        try:
            params = inspect.signature(fn).parameters.values()
        except (TypeError, ValueError):
            break
        for p in params:
            if p.default is not inspect.Parameter.empty:
                out.setdefault(p.name, p.default)
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
            break
    return out


def check_argument_types(node: DictConfig, prefix: str) -> None:
    """Every ``<prefix>.<key>`` whose constructor default is a bool, an int or a float must be one (a string
    ``abc`` for a batch size is named here, not deep inside the constructor)."""
    target = node.get("_target_")
    if not target:
        return
    try:
        defaults = target_defaults(str(target))
    except Exception:  # an unknown target: instantiate reports it
        return
    for key in node:
        key = str(key)
        kind = _kind(defaults.get(key))
        if key.startswith("_") or kind is None or kind[0] is str:
            continue
        try:
            value = node[key]
        except Exception:  # an interpolation that does not resolve here: instantiate reports it
            continue
        if value is not None and not _fits(value, kind[0]):
            owner = str(target).rsplit(".", 1)[-1]
            raise ConfigError(f"{prefix}.{key}={value!r} must be {kind[1]} ({owner} takes {defaults[key]!r} by "
                              f"default); set e.g. {prefix}.{key}={defaults[key]}")


def build_datamodule(data_cfg: DictConfig, return_index: bool = False) -> L.LightningDataModule:
    check_argument_types(data_cfg, "data")
    kwargs = OmegaConf.to_container(data_cfg, resolve=True)
    kwargs.pop("num_train", None)  # informational (losses size memory banks with it)
    if return_index:
        kwargs["return_index"] = True
    try:
        return instantiate(kwargs)
    except Exception as err:
        owner = str(data_cfg.get("_target_", "")).rsplit(".", 1)[-1]
        cause = root_cause(err)
        key = named_key(data_cfg, "data", cause.split(": ", 1)[-1])
        raise ConfigError(f"{key + ': ' if key else ''}could not build the data module ({owner}) from data: "
                          f"{cause}") from None


def build_module_factory(module_cfg: DictConfig) -> Callable[..., L.LightningModule]:
    """``module`` is a ``_partial_`` node: the stages add ``student``, ``teacher`` and ``loss``."""
    try:
        return instantiate(module_cfg)
    except Exception as err:
        raise ConfigError(f"bad module config: {root_cause(err)}") from None


def build_callbacks(callbacks_cfg: Optional[DictConfig], checkpoint_dir: str,
                    progress_bar: bool = True) -> List[L.Callback]:
    callbacks: List[L.Callback] = []
    for name, cb_cfg in (callbacks_cfg or {}).items():
        if cb_cfg is None or "_target_" not in cb_cfg:
            continue
        extra = {"dirpath": checkpoint_dir} if name == "model_checkpoint" else {}
        callbacks.append(instantiate(cb_cfg, **extra))
    if not progress_bar:  # a configured bar would contradict trainer.enable_progress_bar=false
        callbacks = [c for c in callbacks if not isinstance(c, L.pytorch.callbacks.ProgressBar)]
    return callbacks


def build_loggers(logger_cfg: Optional[DictConfig], stage: str, trackers: Any = None) -> List[Any]:
    """Every logger of ``logger`` for one stage: experiment trackers bound to the job's run by ``trackers``
    (:class:`~kd_lightning.app.trackers.JobTrackers`), the others with ``version=<stage>`` (a directory each)."""
    loggers = []
    for name, node in (logger_cfg or {}).items():
        if node is None or "_target_" not in node:
            continue
        if trackers is not None and trackers.handles(str(name)):
            loggers.append(trackers.stage_logger(str(name), stage))
        else:
            loggers.append(instantiate(node, version=stage))
    return loggers
