"""Values kd-train refuses before any training, each with one line: the value, why it is wrong, the fix."""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any, Dict, Iterable, Optional, Set

from omegaconf import DictConfig, OmegaConf

from .errors import ConfigError


# Keys renamed so that the store of trained teachers and the stored teacher outputs never share a word.
RENAMED_KEYS = {
    "teacher_fit.use_cache": "teacher_fit.use_store",
    "distill.teacher_cache": "distill.teacher_outputs",
    "distill.teacher_cache_fp16": "distill.teacher_outputs_fp16",
    "distill.teacher_cache_top_k": "distill.teacher_outputs_top_k",
    "distill.teacher_cache_tail": "distill.teacher_outputs_tail",
    "distill.teacher_cache_allow_random_transform": "distill.teacher_outputs_allow_random_transform",
}


def renamed_key_message(key: str, value: str = "<value>") -> str:
    new = RENAMED_KEYS[key]
    what = "the store of trained teachers" if new.startswith("teacher_fit.") else "stored teacher outputs"
    return f"{key} was renamed {new} ({what}); write {new}={value} instead"


def renamed_key_in(args: Iterable[str]) -> Optional[str]:
    """One line for the first command-line override (``key=value``, ``+key=value``, ``~key``) that uses a
    renamed key, or None. Hydra itself would only say that the key is not in the config."""
    for arg in args:
        if arg.startswith("-"):
            continue
        key, _, value = arg.lstrip("+~").partition("=")
        if key.strip() in RENAMED_KEYS:
            return renamed_key_message(key.strip(), value or "<value>")
    return None


def check_renamed_keys(cfg: DictConfig) -> None:
    """A config file (an experiment of one's own) that still sets a renamed key."""
    for key in RENAMED_KEYS:
        group, _, name = key.partition(".")
        node = cfg.get(group)
        if isinstance(node, DictConfig) and name in node:
            raise ConfigError(renamed_key_message(key))


def teacher_outputs_root(cfg: DictConfig) -> Optional[Path]:
    """Where ``distill.teacher_outputs`` stores teacher outputs: None when it is off (false, null, ""),
    ``<paths.cache_dir>/teacher_outputs`` for true, else the directory it names."""
    setting = cfg.distill.get("teacher_outputs", False)
    if setting is None or setting is False or (isinstance(setting, str) and setting.lower() in ("", "false", "null")):
        return None
    return Path(cfg.paths.cache_dir) / "teacher_outputs" if setting is True else Path(str(setting))


def _int(value: Any) -> Any:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def teacher_has_weights(cfg: DictConfig) -> bool:
    """Whether the teacher network starts from trained weights (torchvision ``weights``, timm ``pretrained``)."""
    if cfg.teacher.get("ckpt_path"):
        return True
    net = cfg.teacher.get("net") or {}
    weights = net.get("weights")
    if weights not in (None, False) and str(weights).strip().lower() not in ("", "none", "null", "false"):
        return True
    return bool(net.get("pretrained"))


def summary_keys(cfg: DictConfig) -> Set[str]:
    """The keys of the flattened summary.json this config writes (what ``optimized_metric`` may name)."""
    from .stage import StageResult

    fields = [f.name for f in dataclasses.fields(StageResult)
              if f.name not in ("name", "val_curve") and f.type not in ("List[float]",)]
    stages = ["teacher", "student"] + (["baseline"] if cfg.baseline.get("enabled", True) else [])
    keys = {f"{s}/{f}" for s in stages for f in fields}
    keys |= {"compression", "size_ratio", "speedup", "acc_retained", "data", "seed", "distill/name",
             "distill/temperature"}
    if cfg.baseline.get("enabled", True):
        keys.add("kd_gain")
    return keys


def check_train_config(cfg: DictConfig) -> None:
    """Everything about kd-train's own keys that can be wrong before any data is read."""
    check_renamed_keys(cfg)
    seed = cfg.get("seed")
    if _int(seed) is None or not 0 <= seed < 2 ** 32:
        raise ConfigError(f"seed={seed!r} must be an integer from 0 to 2**32-1 (it seeds torch, numpy and "
                          "Python's random); set e.g. seed=42")
    check_trainer(cfg.trainer)
    check_extras(cfg)
    given = cfg.teacher.get("ckpt_path")
    max_epochs = cfg.trainer.get("max_epochs")
    max_steps = cfg.trainer.get("max_steps")
    if max_epochs is not None and (_int(max_epochs) is None or max_epochs == 0 or max_epochs < -1):
        raise ConfigError(
            f"trainer.max_epochs={max_epochs!r} trains nothing: the baseline and the student would be untrained; "
            "set trainer.max_epochs to a positive integer (to test a pretrained teacher without training it, "
            "set teacher_fit.max_epochs=0)")
    if max_epochs == -1 and not (_int(max_steps) and max_steps > 0) and not cfg.trainer.get("max_time"):
        raise ConfigError("trainer.max_epochs=-1 trains forever without trainer.max_steps or trainer.max_time; "
                          "set trainer.max_epochs to a positive integer, or set trainer.max_steps=<n>")
    if not given:
        t_epochs = cfg.teacher_fit.get("max_epochs")
        bounded = (_int(max_steps) and max_steps > 0) or cfg.trainer.get("max_time")
        if t_epochs == -1 and not bounded:
            raise ConfigError("teacher_fit.max_epochs=-1 trains the teacher forever (no trainer.max_steps or "
                              "trainer.max_time bounds it); set teacher_fit.max_epochs to a positive integer "
                              "(or 0 to test a teacher with pretrained weights as it is)")
        if _int(t_epochs) is None or t_epochs < -1:
            raise ConfigError(
                f"teacher_fit.max_epochs={t_epochs!r} is not a number of epochs; set it to a positive integer "
                "(or 0 to test a teacher with pretrained weights as it is)")
        if t_epochs == 0 and not teacher_has_weights(cfg):
            raise ConfigError(
                "teacher_fit.max_epochs=0 would test an untrained teacher: teacher.ckpt_path is unset and "
                "the teacher network has no pretrained weights; give it weights (teacher.ckpt_path=<file>, "
                "teacher.weights=DEFAULT, teacher.pretrained=true) or a budget (teacher_fit.max_epochs>=1)")
    test_ckpt = cfg.get("test_ckpt", "best")
    if str(test_ckpt) not in ("best", "last"):
        raise ConfigError(f"test_ckpt={test_ckpt!r} is not a checkpoint choice; use test_ckpt=best (the best "
                          "validation accuracy) or test_ckpt=last")
    generations = cfg.get("generations", 1)
    if _int(generations) is None or generations < 1:
        raise ConfigError(f"generations={generations!r} must be a positive integer (1: one student, 2+: "
                          "born-again generations); set generations=1")
    _check_optimizer(cfg)
    workers = cfg.data.get("num_workers", 0)
    if _int(workers) is None or workers < 0:
        raise ConfigError(f"data.num_workers={workers!r} must be a non-negative integer (0 loads in the main "
                          "process); set data.num_workers=0")
    for key in ("batch_size", "eval_batch_size"):
        value = cfg.data.get(key)
        if value is not None and (_int(value) is None or value < 1):
            raise ConfigError(f"data.{key}={value!r} must be a positive integer; set e.g. data.{key}=64")
    top_k = cfg.distill.get("teacher_outputs_top_k")
    if top_k is not None and (_int(top_k) is None or top_k < 1):
        raise ConfigError(f"distill.teacher_outputs_top_k={top_k!r} must be a positive number of classes to keep, "
                          "or null to store every logit; set distill.teacher_outputs_top_k=null or e.g. =5")
    _check_assistants(cfg.get("assistants") or [])
    _check_self_generated(cfg)
    metric = cfg.get("optimized_metric")
    if metric:
        keys = summary_keys(cfg)
        if metric not in keys:
            raise ConfigError(f"optimized_metric={metric!r} is not a key of the summary this run writes; choose "
                              f"one of {', '.join(sorted(keys))}")
    resume = cfg.get("resume", False)
    if not isinstance(resume, bool):
        raise ConfigError(f"resume={resume!r} must be true or false")
    check_flags(cfg)
    check_module(cfg)
    if cfg.get("task") == "causal_lm":
        check_lm_teacher_budget(cfg)
        check_samples(cfg.get("samples") or {})  # here too: the task reads them when it is built
    teacher_seed = cfg.teacher_fit.get("seed")
    if teacher_seed is not None and (_int(teacher_seed) is None or not 0 <= teacher_seed < 2 ** 32):
        raise ConfigError(f"teacher_fit.seed={teacher_seed!r} must be an integer from 0 to 2**32-1, or null for the "
                          "run's seed; set e.g. teacher_fit.seed=0")
    for key in ("paths.output_dir", "paths.cache_dir", "data.cache_dir"):
        check_writable_dir(cfg, key)
    outputs = teacher_outputs_root(cfg)
    if outputs is not None:
        check_dir_path("distill.teacher_outputs", outputs)


# Switches read as booleans: a string such as "maybe" would be truthy and silently switch them on.
FLAGS = ("module.check_finite", "module.save_teacher", "module.fused_head", "module.channels_last",
         "distill.teacher_outputs_tail", "distill.teacher_outputs_fp16", "baseline.enabled", "baseline.use_store",
         "teacher_fit.use_store")


def check_flags(cfg: DictConfig) -> None:
    for key in FLAGS:
        value = OmegaConf.select(cfg, key, default=None)
        if value is not None and not isinstance(value, bool):
            raise ConfigError(f"{key}={value!r} must be true or false")


def check_module(cfg: DictConfig) -> None:
    """``module`` keys the LightningModule would only refuse when the first stage builds it."""
    module = cfg.get("module") or {}
    interval = module.get("finite_check_interval")
    if interval is not None and (_int(interval) is None or interval < 1):
        raise ConfigError(f"module.finite_check_interval={interval!r} must be a positive number of steps, or null "
                          "(every step on the CPU, every logging step on accelerators); set "
                          "module.finite_check_interval=null")
    mode = module.get("ensemble_mode")
    if mode is not None and mode not in ("probs", "logits"):
        raise ConfigError(f"module.ensemble_mode={mode!r} is not known; use module.ensemble_mode=probs (average the "
                          "teachers' probabilities) or logits")
    if "vocab_alignment" in module:
        from ..lm.module import VOCAB_ALIGNMENTS

        alignment = module.get("vocab_alignment")
        if alignment not in VOCAB_ALIGNMENTS:
            raise ConfigError(f"module.vocab_alignment={alignment!r} is not known; use module.vocab_alignment=strict "
                              "(the same vocabulary size) or truncate (compare the first min(V_t, V_s) logits)")
    per_token = module.get("bytes_per_token")
    if per_token is not None and (not _number(per_token) or not per_token > 0):
        raise ConfigError(f"module.bytes_per_token={per_token!r} must be a positive number of UTF-8 bytes per token, "
                          "or null to count them from the data; set module.bytes_per_token=null")


def check_lm_teacher_budget(cfg: DictConfig) -> None:
    """``teacher_fit.max_steps``, a language-model teacher's budget (0: test pretrained weights as they are)."""
    if cfg.teacher.get("ckpt_path"):
        return
    steps = cfg.teacher_fit.get("max_steps")
    if steps is not None and (_int(steps) is None or steps < 0):
        raise ConfigError(f"teacher_fit.max_steps={steps!r} is not a number of training steps; set it to a positive "
                          "integer, e.g. teacher_fit.max_steps=500 (or 0 to test a teacher with pretrained weights)")
    pretrained = (cfg.teacher.get("net") or {}).get("model_name") == "hf_local" or teacher_has_weights(cfg)
    if not steps and not pretrained:
        raise ConfigError(f"teacher_fit.max_steps={steps!r} would test an untrained teacher: teacher.ckpt_path is "
                          "unset and the teacher network has no pretrained weights; give it a budget (e.g. "
                          "teacher_fit.max_steps=500) or weights (teacher.ckpt_path=<file>, or teacher=hf_local "
                          "teacher.name_or_path=DIR)")


def check_given_teacher(cfg: DictConfig) -> None:
    """``teacher.ckpt_path`` must name a file (checked when the run starts, not when the config is read)."""
    given = cfg.teacher.get("ckpt_path")
    if given and not Path(given).is_file():
        raise ConfigError(f"teacher.ckpt_path={given!r} does not exist; point it at a teacher .ckpt, "
                          "or drop it (teacher.ckpt_path=null) to train a teacher")


def check_extras(cfg: DictConfig) -> None:
    """The optional packages the config asks for (a LoRA student, an experiment tracker), each named with the
    kd-lightning extra that installs it."""
    import importlib.util

    if cfg.student.get("lora") and cfg.get("task", "classification") != "causal_lm":
        raise ConfigError("student.lora adds LoRA adapters to a causal language model, but task="
                          f"{cfg.get('task', 'classification')}; use it with an LM recipe (experiment=lm_pydoc_lora)")
    if cfg.student.get("lora") and importlib.util.find_spec("peft") is None:
        from ..lm.lora import PEFT_MISSING

        raise ConfigError(f"student.lora is set: {PEFT_MISSING}")
    if cfg.teacher.get("lora"):
        raise ConfigError("teacher.lora is set, but LoRA adapters are for the student (the teacher is frozen); "
                          "drop teacher.lora and set student.lora")
    from .trackers import missing_tracker

    missing = missing_tracker(cfg.get("logger"))
    if missing:
        raise ConfigError(missing)


def check_samples(samples: Any) -> None:
    """``samples``: the continuations a language-model report shows (sampled after each stage trains)."""
    prompts = samples.get("prompts")
    if prompts is not None and (not OmegaConf.is_list(prompts) and not isinstance(prompts, list)
                                or not all(isinstance(p, str) for p in prompts)):
        raise ConfigError(f"samples.prompts={prompts!r} must be a list of texts to continue, e.g. "
                          "samples.prompts='[The for statement]' (or [] for no samples)")
    new_tokens = samples.get("max_new_tokens", 24)
    if _int(new_tokens) is None or new_tokens < 1:
        raise ConfigError(f"samples.max_new_tokens={new_tokens!r} must be a positive number of tokens to generate; "
                          "set e.g. samples.max_new_tokens=24")
    temperature = samples.get("temperature", 0.7)
    if not isinstance(temperature, (int, float)) or isinstance(temperature, bool) or not temperature > 0:
        raise ConfigError(f"samples.temperature={temperature!r} must be a positive number (the report samples "
                          "continuations); set e.g. samples.temperature=0.7")
    top_k = samples.get("top_k", 20)
    if _int(top_k) is None or top_k < 0:
        raise ConfigError(f"samples.top_k={top_k!r} must be an integer >= 0 (0: no top-k filter); "
                          "set e.g. samples.top_k=20")


def check_writable_dir(cfg: DictConfig, key: str) -> None:
    """``key`` names a directory this run creates or writes into: its nearest existing ancestor must be a
    writable directory (not a file), or the run would fail after its first stage trained."""
    try:
        value = OmegaConf.select(cfg, key)
    except Exception:  # e.g. ${hydra:...} outside a Hydra run: nothing to check here
        return
    if not value:
        return
    check_dir_path(key, Path(str(value)))


def check_dir_path(key: str, path: Path, shown: Optional[str] = None) -> None:
    """``path`` (the value of ``key``) is a directory this run creates or writes into."""
    import os

    value = shown if shown is not None else str(path)
    path = path.expanduser().absolute()
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{key}={str(value)!r} cannot be a directory: {str(existing)!r} is a file; "
                          f"set {key} to a directory path")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{key}={str(value)!r} is not writable ({str(existing)!r} does not let this user "
                          f"create files); set {key} to a directory you can write")


PRECISIONS = ("32-true", "bf16-mixed", "bf16-true", "16-mixed", "16-true", "64-true")
_PRECISION_ALIASES = {"32": "32-true", "64": "64-true", "16": "16-mixed", "bf16": "bf16-mixed",
                      "transformer-engine": "transformer-engine", "transformer-engine-float16": "transformer-engine"}


def runs_on_cpu(trainer_cfg: DictConfig) -> bool:
    """Whether ``trainer.accelerator`` puts the run on the CPU (``auto`` does when no GPU is visible)."""
    import torch

    accelerator = str(trainer_cfg.get("accelerator", "auto")).lower()
    if accelerator == "cpu":
        return True
    if accelerator != "auto":
        return False
    return not torch.cuda.is_available() and not torch.backends.mps.is_available()


ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps", "tpu")


def check_accelerator(trainer_cfg: DictConfig) -> None:
    """``trainer.accelerator`` must be one Lightning knows, and present on this machine."""
    import importlib.util

    import torch

    accelerator = trainer_cfg.get("accelerator")
    if accelerator is None or not isinstance(accelerator, str):
        return
    name = accelerator.lower()
    if name not in ACCELERATORS:
        raise ConfigError(f"trainer.accelerator={accelerator!r} is not an accelerator Lightning knows; use one of "
                          f"{', '.join(ACCELERATORS)}")
    missing = {"gpu": not torch.cuda.is_available() and not torch.backends.mps.is_available(),
               "cuda": not torch.cuda.is_available(), "mps": not torch.backends.mps.is_available(),
               "tpu": importlib.util.find_spec("torch_xla") is None}
    if missing.get(name):
        raise ConfigError(f"trainer.accelerator={accelerator!r}{' (trainer=gpu sets it)' if name == 'gpu' else ''} "
                          f"needs a {'TPU' if name == 'tpu' else name.upper() if name == 'mps' else 'GPU'}, and torch "
                          "sees none on this machine; run on the CPU with trainer=cpu (or trainer.accelerator=cpu), "
                          "or use a machine with one")
    devices = trainer_cfg.get("devices")
    if isinstance(devices, str) and devices != "auto" and not re.fullmatch(r"\s*-?\d+\s*(,\s*\d+\s*)*,?\s*", devices):
        raise ConfigError(f"trainer.devices={devices!r} is not a number of devices; set trainer.devices=1 (a number, "
                          "-1 for all of them, a list of indices such as [0,1], or auto)")


def check_trainer(trainer_cfg: DictConfig) -> None:
    """The ``trainer`` keys whose wrong values Lightning would only reject when a stage builds its Trainer."""
    check_accelerator(trainer_cfg)
    precision = trainer_cfg.get("precision")
    if precision is not None:
        name = str(precision).lower()
        name = _PRECISION_ALIASES.get(name, name)
        if name not in PRECISIONS and name != "transformer-engine":
            raise ConfigError(f"trainer.precision={precision!r} is not a precision Lightning knows; use one of "
                              f"{', '.join(PRECISIONS)}")
        if name in ("16-mixed", "16-true") and runs_on_cpu(trainer_cfg):
            raise ConfigError(f"trainer.precision={precision!r} (float16) needs a GPU and this run is on the CPU; "
                              "on the CPU use trainer.precision=bf16-mixed, bf16-true or 32-true "
                              "(or trainer=gpu on a machine with a GPU)")
    devices = trainer_cfg.get("devices")
    if _int(devices) is not None and (devices == 0 or devices < -1):
        raise ConfigError(f"trainer.devices={devices!r} asks for no device; set trainer.devices=1 (a number of "
                          "devices, -1 for all of them, or auto)")
    max_steps = trainer_cfg.get("max_steps")
    if max_steps is not None and (_int(max_steps) is None or max_steps < -1):
        raise ConfigError(f"trainer.max_steps={max_steps!r} must be a positive integer, or -1 for no step limit; "
                          "set e.g. trainer.max_steps=-1")
    positive = {"accumulate_grad_batches": "1", "check_val_every_n_epoch": "1", "log_every_n_steps": "20"}
    for key, example in positive.items():
        value = trainer_cfg.get(key)
        if value is not None and (_int(value) is None or value < 1):
            raise ConfigError(f"trainer.{key}={value!r} must be a positive integer; set e.g. trainer.{key}={example}")
    limit = trainer_cfg.get("limit_train_batches")
    if limit is not None and (not isinstance(limit, (int, float)) or isinstance(limit, bool) or not limit > 0
                              or (isinstance(limit, float) and limit > 1)):
        raise ConfigError(f"trainer.limit_train_batches={limit!r} trains nothing or is not a limit; set a fraction of "
                          "the epoch in (0, 1.0] or a number of batches >= 1 (or drop it)")
    clip = trainer_cfg.get("gradient_clip_val")
    if clip is not None and (not isinstance(clip, (int, float)) or isinstance(clip, bool) or not clip >= 0):
        raise ConfigError(f"trainer.gradient_clip_val={clip!r} must be a number >= 0 (0 or null: no clipping); "
                          "set e.g. trainer.gradient_clip_val=1.0")


def _check_optimizer(cfg: DictConfig) -> None:
    opt = cfg.optim.get("optimizer") or {}
    for key in ("lr", "weight_decay", "momentum"):
        if key not in opt:
            continue
        value = OmegaConf.select(cfg, f"optim.optimizer.{key}")
        bad = not isinstance(value, (int, float)) or isinstance(value, bool) or value != value
        if not bad:
            bad = value <= 0 if key == "lr" else value < 0
        if bad:
            want = "a positive number" if key == "lr" else "a number >= 0"
            example = "0.01" if key == "lr" else "0"
            raise ConfigError(f"optim.optimizer.{key}={value!r} must be {want}; set e.g. "
                              f"optim.optimizer.{key}={example}")


def _check_assistants(names: Iterable[Any]) -> None:
    from ..models import list_models

    known = list_models()
    for name in names:
        if str(name) not in known:
            close = [k for k in known if str(name).lower() in k.lower()][:5]
            raise ConfigError(f"assistants=[{name}]: {name!r} is not a model preset; use names from the teacher=/"
                              f"student= choices{' such as ' + ', '.join(close) if close else ''} "
                              f"(see kd-train --help)")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


def _check_self_generated(cfg: DictConfig) -> None:
    """``distill.on_policy``, ``distill.sequence_kd`` and ``distill.sampling`` (language models)."""
    on_policy = cfg.distill.get("on_policy") or {}
    lam = on_policy.get("lam") if isinstance(on_policy, DictConfig) else None
    seqkd = cfg.distill.get("sequence_kd", False)
    if not isinstance(seqkd, bool):
        raise ConfigError(f"distill.sequence_kd={seqkd!r} must be true or false")
    if lam is None and not seqkd:
        return
    if cfg.get("task", "classification") != "causal_lm":
        which = "distill.on_policy.lam" if lam is not None else "distill.sequence_kd"
        raise ConfigError(f"{which} generates text, so it needs a language model (task=causal_lm, e.g. "
                          "experiment=lm_pydoc_pairs); unset it for classifiers")
    if lam is not None:
        if not _number(lam) or not 0.0 <= lam <= 1.0:
            raise ConfigError(f"distill.on_policy.lam={lam!r} must be in [0, 1] (0: supervised KD, 1: fully "
                              "on-policy), or null to turn on-policy distillation off")
        if cfg.distill.get("kd_positions") != "labels":
            raise ConfigError(f"distill.on_policy needs distill.kd_positions=labels (got "
                              f"{cfg.distill.get('kd_positions')!r}): the divergence must be taken on the sampled "
                              "tokens only, not on the prompt")
    sampling = cfg.distill.get("sampling") or {}
    new_tokens, temperature, top_k = (sampling.get("max_new_tokens", 32), sampling.get("temperature", 1.0),
                                      sampling.get("top_k"))
    if _int(new_tokens) is None or new_tokens < 1:
        raise ConfigError(f"distill.sampling.max_new_tokens={new_tokens!r} must be a positive integer (the tokens "
                          "sampled after each prompt); set e.g. distill.sampling.max_new_tokens=32")
    if not _number(temperature) or temperature <= 0:
        raise ConfigError(f"distill.sampling.temperature={temperature!r} must be a number > 0; use a small value "
                          "such as 0.1 for near-greedy sampling")
    if top_k is not None and (_int(top_k) is None or top_k < 1):
        raise ConfigError(f"distill.sampling.top_k={top_k!r} must be a positive integer, or null to sample from "
                          "the whole vocabulary")
    if teacher_outputs_root(cfg) is not None:
        raise ConfigError("distill.teacher_outputs stores the teacher's outputs on the training data, but on-policy "
                          "and sequence-level KD train on generated text; set distill.teacher_outputs=false")


# ----------------------------------------------------------------------------- by model family
def check_task_name(name: Any, known: Iterable[str]) -> None:
    known = list(known)
    if name not in known:
        raise ConfigError(f"task={name!r} is not known; use one of {', '.join(known)} "
                          "(experiment=lm_pydoc sets causal_lm)")


def latency_timing(cfg: DictConfig) -> Dict[str, Any]:
    """The report's latency settings (``latency.warmup``, ``latency.min_repeats``, ``latency.min_seconds``),
    checked: one line naming the value otherwise."""
    given = cfg.get("latency") or {}
    timing = {"warmup": given.get("warmup", 10), "min_repeats": given.get("min_repeats", 30),
              "min_seconds": given.get("min_seconds", 0.5)}
    warmup, repeats, seconds = _int(timing["warmup"]), _int(timing["min_repeats"]), timing["min_seconds"]
    if not isinstance(warmup, int) or isinstance(warmup, bool) or warmup < 0:
        raise ConfigError(f"latency.warmup={timing['warmup']!r} must be a number of untimed passes >= 0; "
                          "set e.g. latency.warmup=10")
    if not isinstance(repeats, int) or isinstance(repeats, bool) or repeats < 2:
        raise ConfigError(f"latency.min_repeats={timing['min_repeats']!r} must be an integer >= 2 (the median and "
                          "its interquartile range need two timed passes); set e.g. latency.min_repeats=30")
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds >= 0:
        raise ConfigError(f"latency.min_seconds={seconds!r} must be a number of seconds >= 0; "
                          "set e.g. latency.min_seconds=0.5")
    return {"warmup": warmup, "min_repeats": repeats, "min_seconds": float(seconds)}


def check_classification_config(cfg: DictConfig, loss: Any) -> None:
    """What a classifier run refuses: a token loss, and stored teacher outputs that cannot serve its loss."""
    from ..losses import LogitMSE, TokenKD

    if isinstance(loss, TokenKD):
        raise ConfigError("distill=token_kd distills language models; run it with experiment=lm_pydoc (task=causal_lm) "
                          "and an LM data set (data=lm_pydoc | lm_text | lm_jsonl)")
    if teacher_outputs_root(cfg) is None:
        return
    name = cfg.distill.get("name", type(loss).__name__)
    if loss.teacher_taps:
        raise ConfigError(f"distill.teacher_outputs stores teacher logits only, but {name} reads teacher features "
                          f"({', '.join(loss.teacher_taps)}); set distill.teacher_outputs=false")
    if cfg.distill.get("batch_transform") is not None:
        raise ConfigError("distill.batch_transform changes the inputs at every step, so the teacher must label them "
                          "online (consistent teaching); set distill.teacher_outputs=false, or pick a recipe without "
                          "it (e.g. experiment=mnist1d_kd)")
    parts = list(getattr(loss, "losses", [loss]))
    if cfg.distill.get("teacher_outputs_top_k") and any(isinstance(o, LogitMSE) for o in parts):
        raise ConfigError("LogitMSE matches raw teacher logits, which top-k storage does not keep; "
                          "set distill.teacher_outputs_top_k=null")


def check_causal_lm_config(cfg: DictConfig, loss: Any) -> None:
    """What a language-model run refuses: a classifier loss, bad sampling settings, and stored teacher
    outputs (top-k next-token rows) that cannot serve its loss."""
    from ..losses import CrossTokenizerLoss, TokenKD

    check_student_tokenizer(cfg, loss)
    if not isinstance(loss, (TokenKD, CrossTokenizerLoss)):
        raise ConfigError(f"distill={cfg.distill.get('name')} is a classifier method; language models distill with "
                          "distill=token_kd (distill.divergence=forward|reverse|jsd|skew_forward|skew_reverse|tvd)")
    check_samples(cfg.get("samples") or {})
    if teacher_outputs_root(cfg) is None:
        return
    if loss.divergence != "forward":
        raise ConfigError(f"distill.teacher_outputs stores the teacher's top-k next-token distribution, which serves "
                          f"the forward KL only, not distill.divergence={loss.divergence}; set "
                          "distill.divergence=forward or distill.teacher_outputs=false")
    if loss.kd_weight <= 0:
        raise ConfigError("distill.teacher_outputs=true with distill.kd_weight=0 stores a teacher signal nothing "
                          "reads; set distill.teacher_outputs=false")
    if cfg.module.get("fused_head"):
        raise ConfigError("distill.teacher_outputs=true needs the student's logits; set module.fused_head=false")
    top_k, vocab = cfg.distill.get("teacher_outputs_top_k"), cfg.teacher.get("net", {}).get("vocab_size")
    if isinstance(top_k, int) and isinstance(vocab, int):
        check_top_k_width(top_k, vocab)


def check_student_tokenizer(cfg: DictConfig, loss: Any) -> None:
    """A cross-tokenizer loss needs a student tokenizer of its own (``student_tokenizer``), and a student
    tokenizer of its own needs a cross-tokenizer loss (or labels only), and none of the features that read the
    teacher's distribution token by token or make the student write text for the teacher to score."""
    from ..losses import CrossTokenizerLoss, TokenKD

    name = cfg.distill.get("name")
    node = cfg.get("student_tokenizer") or {}
    teacher_tok = f"the data's tokenizer ({cfg.data.get('_target_', '').rsplit('.', 1)[-1]}, data.vocab_size=" \
                  f"{cfg.data.get('vocab_size')})"
    if isinstance(loss, CrossTokenizerLoss) and not node:
        raise ConfigError(f"distill={name} is a cross-tokenizer loss, but the teacher tokenizer is {teacher_tok} and "
                          "the student tokenizer is the same one (student_tokenizer=null); give the student its own, "
                          "e.g. student_tokenizer.kind=unigram student_tokenizer.vocab_size=1024 "
                          "student.net.vocab_size=1024 (experiment=lm_pydoc_xtok), or use distill=token_kd")
    if not node:
        return
    student_tok = (f"student_tokenizer.path={node.get('path')}" if node.get("path") else
                   f"a {node.get('kind', 'unigram')} tokenizer of student_tokenizer.vocab_size={node.get('vocab_size')}")
    if isinstance(loss, TokenKD) and loss.kd_weight > 0:
        raise ConfigError(f"the teacher tokenizer is {teacher_tok} and the student tokenizer {student_tok}, but "
                          f"distill={name} compares the two models' logits token by token, which needs one tokenizer; "
                          "use distill=span_align or distill=uld (cross-tokenizer losses), or student_tokenizer=null")
    on_policy = cfg.distill.get("on_policy") or {}
    offending = [(teacher_outputs_root(cfg) is not None, "distill.teacher_outputs", "false"),
                 (bool(cfg.distill.get("sequence_kd")), "distill.sequence_kd", "false"),
                 (on_policy.get("lam") is not None, "distill.on_policy.lam", "null"),
                 (bool((cfg.get("teacher_ppl_of_samples") or {}).get("enabled")), "teacher_ppl_of_samples.enabled",
                  "false"),
                 (bool(cfg.get("assistants")), "assistants", "[]"),
                 (int(cfg.get("generations") or 1) > 1, "generations", "1"),
                 (bool(cfg.module.get("fused_head")), "module.fused_head", "false")]
    bad = [(key, fix) for wrong, key, fix in offending if wrong]
    if bad:
        raise ConfigError(f"student_tokenizer gives the student another tokenizer than the teacher's, but "
                          f"{', '.join(key for key, _ in bad)} needs one tokenizer for both (the teacher read token "
                          f"by token, or text written by one model and scored by the other); set "
                          f"{', '.join(f'{key}={fix}' for key, fix in bad)}")


EXPORT_FORMATS = ("onnx", "torchscript", "hf")


def check_export_format(fmt: str, allowed: Iterable[str] = ("onnx", "torchscript"), family: str = "") -> None:
    """``kd-export format=...``: checked before the checkpoint is read (every format), and again for the
    checkpoint's model family (``allowed``)."""
    allowed = list(allowed)
    if fmt not in allowed:
        options = " or ".join(f"format={a}" for a in allowed)
        raise ConfigError(f"format={fmt!r} is not supported{' for ' + family if family else ''}; use {options}")


def check_top_k_width(top_k: Optional[int], width: Optional[int]) -> None:
    """``distill.teacher_outputs_top_k`` against the teacher's vocabulary (``width`` tokens, None: unknown)."""
    if top_k is None and width is None:
        raise ConfigError("distill.teacher_outputs_top_k=null keeps the whole vocabulary, but the teacher does not "
                          "say its size; set distill.teacher_outputs_top_k=K")
    if top_k is not None and width is not None and int(top_k) > width:
        raise ConfigError(f"distill.teacher_outputs_top_k={top_k} exceeds the teacher's vocabulary of {width} tokens; "
                          f"set distill.teacher_outputs_top_k<={width} (or null for all of them)")


# ------------------------------------------------------------------- built networks against the data
def check_classes(net: Any, datamodule: Any, role: str, num_classes: int) -> None:
    """One forward pass on a training batch: the output width must equal the data's class count."""
    import torch

    from ..batch import unpack

    x = unpack(next(iter(datamodule.train_dataloader()))).x[:2]
    was = net.training
    net.eval()
    with torch.no_grad():
        out = net(x)
    net.train(was)
    if out.ndim != 2 or out.shape[-1] != num_classes:
        raise ConfigError(
            f"the {role} outputs shape {tuple(out.shape)} but the data has {num_classes} classes; "
            f"build it with num_classes={num_classes} (its config uses ${{data.num_classes}}), or pick a "
            f"{role} checkpoint trained on this data")


def check_lm(net: Any, datamodule: Any, role: str) -> None:
    """The data's sequences must fit the model's context, and its tokenizer the model's vocabulary."""
    seq_len = int(getattr(datamodule, "seq_len", 0) or 0)
    config = getattr(net, "config", None)
    limit = next((getattr(config, a) for a in ("max_position_embeddings", "n_positions", "n_ctx")
                  if getattr(config, a, None) is not None), None)
    if limit is not None and seq_len > int(limit):
        raise ConfigError(f"data.seq_len={seq_len} is longer than the {role}'s context of {limit} positions; set "
                          f"data.seq_len<={limit}, or {role}.net.max_position_embeddings>={seq_len} for a preset")
    tokenizer = getattr(datamodule, "tokenizer", None)
    source = getattr(net, "name_or_path", None)  # a local Hugging Face teacher's directory
    if role == "teacher" and tokenizer is not None and source:
        from ..models.local_files import check_teacher_tokenizer

        try:
            check_teacher_tokenizer(source, tokenizer)
        except ValueError as err:
            raise ConfigError(str(err)) from None
    embeddings = net.get_input_embeddings() if hasattr(net, "get_input_embeddings") else None
    if tokenizer is not None and embeddings is not None and len(tokenizer) > embeddings.num_embeddings:
        raise ConfigError(
            f"the tokenizer has {len(tokenizer)} tokens but the {role}'s vocabulary has {embeddings.num_embeddings}; "
            f"build the {role} with vocab_size>={len(tokenizer)} ({role}.net.vocab_size follows data.vocab_size), "
            f"or give the data the {role}'s own tokenizer (data.tokenizer=DIR)")
