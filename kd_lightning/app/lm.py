"""What only ``task=causal_lm`` runs need: checks, the teacher stage, measurements, samples, the HF export.

The process is :func:`kd_lightning.app.pipeline.run`; this module supplies its language-model pieces, each
taking built objects (networks, the data module, the tokenizer, a module factory, :class:`Stages`).
"""
from __future__ import annotations

import copy
import functools
import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import lightning as L
import torch
from omegaconf import DictConfig, open_dict
from torch import nn

from ..cache.fingerprint import fingerprint_tokenizer
from ..losses import TokenKD
from ..teacher import load_teacher
from . import teacher_store
from .build import build_module_factory, build_net
from .checks import teacher_cache_root
from .errors import ConfigError
from .stage import StageResult, count_params, state_dict_bytes

log = logging.getLogger(__name__)
ModuleFactory = Callable[..., L.LightningModule]


# ------------------------------------------------------------------------------------------ checks
def check_lm(net: nn.Module, datamodule: L.LightningDataModule, role: str) -> None:
    """The data's sequences must fit the model's context, and its tokenizer the model's vocabulary."""
    seq_len = int(getattr(datamodule, "seq_len", 0) or 0)
    config = getattr(net, "config", None)
    limit = next((getattr(config, a) for a in ("max_position_embeddings", "n_positions", "n_ctx")
                  if getattr(config, a, None) is not None), None)
    if limit is not None and seq_len > int(limit):
        raise ConfigError(f"data.seq_len={seq_len} is longer than the {role}'s context of {limit} positions; set "
                          f"data.seq_len<={limit}, or {role}.net.max_position_embeddings>={seq_len} for a preset")
    tokenizer = getattr(datamodule, "tokenizer", None)
    embeddings = net.get_input_embeddings() if hasattr(net, "get_input_embeddings") else None
    if tokenizer is not None and embeddings is not None and len(tokenizer) > embeddings.num_embeddings:
        raise ConfigError(
            f"the tokenizer has {len(tokenizer)} tokens but the {role}'s vocabulary has {embeddings.num_embeddings}; "
            f"build the {role} with vocab_size>={len(tokenizer)} ({role}.net.vocab_size follows data.vocab_size), "
            f"or give the data the {role}'s own tokenizer (data.tokenizer=DIR)")


def labels_only_loss() -> TokenKD:
    """The teacher's and the baseline's objective: next-token cross-entropy on the labels, no teacher."""
    return TokenKD(ce_weight=1.0, kd_weight=0.0)


def module_factory(module_cfg: DictConfig, tokenizer: Any) -> ModuleFactory:
    """``module`` (a partial of CausalLMDistillationModule) with the data's tokenizer bound."""
    return functools.partial(build_module_factory(module_cfg), tokenizer=tokenizer)


def teacher_view(cfg: DictConfig) -> DictConfig:
    """A copy of ``cfg`` whose trainer budget is ``teacher_fit.max_steps``, so that everything interpolating
    ``${trainer.max_steps}`` (the one-cycle schedule's total_steps) follows the teacher stage's budget.

    Take it before anything is instantiated from ``cfg``: instantiation resolves interpolations in place.
    """
    view = copy.deepcopy(cfg)
    steps = cfg.teacher_fit.get("max_steps")
    if steps:
        with open_dict(view):
            view.trainer.max_steps = int(steps)
    return view


# ------------------------------------------------------------------------------------- the teacher
def obtain_teacher(cfg: DictConfig, datamodule: L.LightningDataModule, stages: Any,
                   tcfg: Optional[DictConfig] = None) -> Tuple[nn.Module, StageResult]:
    """The teacher LM: given (``teacher.ckpt_path``, ``teacher=hf_local`` or ``teacher_fit.max_steps=0``),
    from this machine's cache, or trained for ``teacher_fit.max_steps`` and cached.

    The cache directory is the classifier's key (teacher, data, seed, optimizer, precision) plus the
    tokenizer's digest and the step budget; ``meta.json`` holds the checkpoint's SHA-256, checked before use.
    """
    from .pipeline import teacher_cache_dir

    steps = int(cfg.teacher_fit.get("max_steps") or 0)
    tcfg = tcfg if tcfg is not None else teacher_view(cfg)
    make_module = module_factory(tcfg.module, datamodule.tokenizer)
    t0 = time.perf_counter()
    net = build_net(cfg.teacher, "teacher")
    check_lm(net, datamodule, "teacher")
    given = cfg.teacher.get("ckpt_path")
    if given or steps == 0 or cfg.teacher.net.get("model_name") == "hf_local":
        module = make_module(student=net, teacher=None, loss=labels_only_loss())
        result = stages.test("teacher", module, datamodule, net, time.perf_counter() - t0,
                             "checkpoint" if given else "pretrained")
        result.ckpt_path = str(given or cfg.teacher.net.get("name_or_path") or "") or None
        return net, result
    key = hashlib.sha256(json.dumps([fingerprint_tokenizer(datamodule.tokenizer), steps]).encode()).hexdigest()[:16]
    cache = teacher_cache_dir(tcfg) / f"lm_{key}"
    ckpt = cache / "teacher.ckpt"
    use_cache = bool(cfg.teacher_fit.get("use_cache", True)) and not cfg.trainer.get("fast_dev_run")

    def from_cache() -> Tuple[Optional[nn.Module], Optional[StageResult]]:
        ok, why = teacher_store.check_entry(cache)
        if not ok:
            if why:
                log.warning("cached teacher %s is not usable (%s): training it again", ckpt, why)
            return None, None
        loaded = load_teacher(ckpt, net)
        module = make_module(student=loaded, teacher=None, loss=labels_only_loss())
        result = stages.test("teacher", module, datamodule, loaded, time.perf_counter() - t0, "cache")
        result.val_curve, result.ckpt_path = teacher_store.read_meta(cache).get("val_curve", []), str(ckpt)
        return loaded, result

    if not use_cache:
        return train_teacher(net, make_module, datamodule, stages, steps)
    found, result = from_cache()
    if found is not None:
        return found, result
    # Jobs that need the same teacher (a sweep, joblib workers) take turns: the first trains it, the others
    # wait on the lock and then read it back.
    with teacher_store.entry_lock(cache, timeout_s=float(cfg.teacher_fit.get("lock_timeout_s") or 24 * 3600)):
        found, result = from_cache()
        if found is not None:
            return found, result
        net, result = train_teacher(net, make_module, datamodule, stages, steps)
        teacher_store.write_entry(cache, {"state_dict": {f"student.{k}": v for k, v in net.state_dict().items()}},
                                  {"ppl": result.ppl, "val_curve": result.val_curve, "steps": steps,
                                   "tokenizer_sha256": fingerprint_tokenizer(datamodule.tokenizer)})
        result.ckpt_path = str(ckpt)
    return net, result


def train_teacher(net: nn.Module, make_module: ModuleFactory, datamodule: L.LightningDataModule, stages: Any,
                  steps: int) -> Tuple[nn.Module, StageResult]:
    module = make_module(student=net, teacher=None, loss=labels_only_loss())
    result = stages.fit("teacher", module, datamodule, net, max_steps=steps)
    result.source = "trained"
    return net, result


# ------------------------------------------------------------------------------ the token cache
def vocab_width(net: nn.Module) -> Optional[int]:
    """The number of logits a causal LM returns per token, when its output layer tells."""
    head = net.get_output_embeddings() if hasattr(net, "get_output_embeddings") else None
    if isinstance(head, nn.Linear):
        return int(head.out_features)
    size = getattr(getattr(net, "config", None), "vocab_size", None)
    return int(size) if size else None


def check_token_cache(cfg: DictConfig, loss: TokenKD) -> None:
    """``distill.teacher_cache=true`` for a language model: what the stored top-k signal can serve."""
    if teacher_cache_root(cfg) is None:
        return
    if loss.divergence != "forward":
        raise ConfigError(f"distill.teacher_cache stores the teacher's top-k next-token distribution, which serves the "
                          f"forward KL only, not distill.divergence={loss.divergence}; set distill.divergence=forward "
                          "or distill.teacher_cache=false")
    if loss.kd_weight <= 0:
        raise ConfigError("distill.teacher_cache=true with distill.kd_weight=0 stores a teacher signal nothing reads; "
                          "set distill.teacher_cache=false")
    if cfg.module.get("fused_head"):
        raise ConfigError("distill.teacher_cache=true needs the student's logits; set module.fused_head=false")
    top_k, vocab = cfg.distill.get("teacher_cache_top_k"), cfg.teacher.get("net", {}).get("vocab_size")
    if isinstance(top_k, int) and isinstance(vocab, int) and top_k > vocab:
        raise ConfigError(f"distill.teacher_cache_top_k={top_k} exceeds the teacher's vocabulary of {vocab} tokens; "
                          f"set distill.teacher_cache_top_k<={vocab} (or null for all of them)")


def token_cache_datamodule(cfg: DictConfig, teacher: nn.Module, loss: TokenKD,
                           datamodule: L.LightningDataModule) -> Optional[L.LightningDataModule]:
    """``distill.teacher_cache`` for language models: the training set's top-k teacher signal, stored once
    (keyed by the teacher's weights, the tokenizer, the data, k and T) and served with every batch."""
    root = teacher_cache_root(cfg)
    if root is None:
        return None
    from ..cache import TeacherOutputsError
    from ..cache.tokens import TeacherOutputsTokenDataModule

    width = vocab_width(teacher)
    top_k = cfg.distill.get("teacher_cache_top_k") or width
    if top_k is None:
        raise ConfigError("distill.teacher_cache_top_k=null keeps the whole vocabulary, but the teacher does not say "
                          "its size; set distill.teacher_cache_top_k=K")
    if width is not None and int(top_k) > width:
        raise ConfigError(f"distill.teacher_cache_top_k={top_k} exceeds the teacher's vocabulary of {width} tokens; "
                          f"set distill.teacher_cache_top_k<={width}")
    cached = TeacherOutputsTokenDataModule(datamodule, teacher, root, tokenizer=datamodule.tokenizer, top_k=int(top_k),
                                   temperature=loss.temperature)
    t0 = time.perf_counter()
    try:
        cache = cached.prepare_outputs()
    except TeacherOutputsError as err:
        raise ConfigError(str(err)) from None
    cached.prepare_s = round(time.perf_counter() - t0, 2)  # built (teacher forward over the data) or opened
    log.info("teacher top-%d signal cached in %.1fs: %r", int(top_k), cached.prepare_s, cache)
    return cached


def cache_summary(datamodule: L.LightningDataModule) -> Optional[Dict[str, Any]]:
    """What the report says about a stored teacher signal (None when the student distilled online)."""
    cache = getattr(datamodule, "outputs", None)
    if cache is None or not hasattr(cache, "bytes_per_token"):
        return None
    return {"top_k": cache.top_k, "temperature": cache.temperature, "tokens": cache.num_tokens,
            "bytes": cache.nbytes(), "bytes_per_token": round(cache.bytes_per_token(), 2),
            "dense_fp32_bytes_per_token": 4 * cache.vocab_size, "prepare_s": getattr(datamodule, "prepare_s", None),
            "path": str(cache.directory)}


# ---------------------------------------------------------------------------------- measurements
@torch.no_grad()
def sample_continuations(net: nn.Module, tokenizer: Any, prompts: Sequence[str], max_new_tokens: int = 24,
                         temperature: float = 0.7, top_k: int = 20, seed: int = 0) -> List[str]:
    """One sampled continuation per prompt (same random stream for every model, so rows compare)."""
    if not prompts or not hasattr(net, "generate"):
        return []
    device = next(net.parameters()).device
    was = net.training
    net.eval()
    out = []
    with torch.random.fork_rng(devices=[]):
        for i, prompt in enumerate(prompts):
            torch.manual_seed(seed + i)
            ids = torch.tensor([tokenizer(prompt, add_special_tokens=False)["input_ids"]], device=device)
            gen = net.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True, temperature=float(temperature),
                               top_k=int(top_k), max_new_tokens=int(max_new_tokens), use_cache=True,
                               pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
            out.append(tokenizer.decode(gen[0, ids.shape[1]:], skip_special_tokens=True))
    net.train(was)
    return out


@torch.no_grad()
def forward_speed(net: nn.Module, input_ids: torch.Tensor, repeats: int = 10) -> Tuple[float, float]:
    """(median CPU ms of one forward pass over one sequence, tokens per second of it)."""
    device = next(net.parameters()).device
    was = net.training
    net.eval().cpu()
    x = input_ids[:1].cpu()
    net(x)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        net(x)
        times.append(time.perf_counter() - t0)
    net.to(device).train(was)
    median = sorted(times)[len(times) // 2]
    return 1000.0 * median, x.numel() / max(median, 1e-9)


class MeasureLM:
    """Test metrics of one stage (perplexity, bits per byte, agreement) plus size, speed and samples."""

    def __init__(self, tokenizer: Any, prompts: Sequence[str] = (), max_new_tokens: int = 24,
                 temperature: float = 0.7, top_k: int = 20, seed: int = 0):
        self.tokenizer, self.prompts = tokenizer, list(prompts)
        self.sampling = dict(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, seed=seed)

    def __call__(self, name: str, net: nn.Module, datamodule: L.LightningDataModule, test: Dict[str, Any],
                 wall_s: float, **extra: Any) -> StageResult:
        ids = next(iter(datamodule.test_dataloader()))["input_ids"]
        latency, tokens_per_s = forward_speed(net, ids)
        get = lambda k: float(test[k]) if k in test else None  # noqa: E731
        return StageResult(
            name=name, acc=None, params=count_params(net), size_bytes=state_dict_bytes(net), latency_ms=latency,
            wall_s=round(wall_s, 2), agreement=get("test/agreement"), ppl=get("test/ppl"), bpb=get("test/bpb"),
            tokens_per_s=round(tokens_per_s, 1),
            samples=sample_continuations(net, self.tokenizer, self.prompts, **self.sampling), **extra)


# ------------------------------------------------------------------- sequences the models write themselves
def sampling_settings(cfg: DictConfig, datamodule: L.LightningDataModule) -> Dict[str, Any]:
    """:class:`~kd_lightning.lm.generation.Sampling` arguments: ``distill.sampling`` plus the data's
    end-of-sequence and padding tokens and its prompt length (``prompt_tokens``, for data without one)."""
    node = cfg.distill.get("sampling") or {}
    tokenizer = datamodule.tokenizer
    top_k = node.get("top_k")
    return dict(max_new_tokens=int(node.get("max_new_tokens", 32)), temperature=float(node.get("temperature", 1.0)),
                top_k=int(top_k) if top_k else None, eos_token_id=tokenizer.eos_token_id,
                pad_token_id=int(tokenizer.pad_token_id),
                prompt_tokens=int(getattr(datamodule, "prompt_tokens", 0) or 32))


def self_generated(cfg: DictConfig, teacher: Optional[nn.Module],
                   datamodule: L.LightningDataModule) -> Tuple[L.LightningDataModule, Dict[str, Any]]:
    """The student stage's data and extra module arguments for ``distill.sequence_kd`` (the data become
    the teacher's completions of the training prompts) and ``distill.on_policy.lam`` (GKD's OnPolicy)."""
    from ..lm import OnPolicy, Sampling, SequenceKDDataModule

    settings = sampling_settings(cfg, datamodule)
    extra: Dict[str, Any] = {}
    lam = (cfg.distill.get("on_policy") or {}).get("lam")
    if lam is not None:
        extra["on_policy"] = OnPolicy(lam=float(lam), **settings)
    if cfg.distill.get("sequence_kd", False):
        datamodule = SequenceKDDataModule(datamodule, teacher, cache_dir=str(Path(cfg.paths.cache_dir) / "seqkd"),
                                          sampling=Sampling(**settings), batch_size=64, seed=int(cfg.seed))
    return datamodule, extra


@torch.no_grad()
def teacher_ppl_of_samples(net: nn.Module, teacher: nn.Module, datamodule: L.LightningDataModule, sampling: Any,
                           seed: int = 0, max_prompts: Optional[int] = None) -> Optional[float]:
    """The teacher's perplexity of ``net``'s own continuations of the held-out prompts.

    ``net`` samples a continuation of each test row's prompt (the tokens before its first labelled one) with
    ``sampling`` (a :class:`~kd_lightning.lm.generation.Sampling`), from the random state ``seed`` (the
    caller's random state is left as it was); the teacher then scores the sampled tokens, up to and
    including the first end-of-sequence token: exp(Σ −log p_teacher(token | prefix) / number of tokens).
    A low value means the model writes what the teacher finds likely. None when nothing was sampled.
    """
    from ..forward import call_signature, lm_logits
    from ..lm import on_policy_batch

    device = next(net.parameters()).device
    teacher_device = next(teacher.parameters()).device
    signature = call_signature(teacher)
    was = teacher.training
    teacher.eval()
    nll = torch.zeros((), dtype=torch.float64)
    count, seen = 0, 0
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            for batch in datamodule.test_dataloader():
                if max_prompts is not None and seen >= max_prompts:
                    break
                take = batch["input_ids"].shape[0] if max_prompts is None else min(batch["input_ids"].shape[0],
                                                                                    max_prompts - seen)
                seen += take
                batch = {k: v[:take].to(device) for k, v in batch.items() if isinstance(v, torch.Tensor)}
                gen = {k: v.to(teacher_device) for k, v in on_policy_batch(net, batch, sampling).items()}
                logits = lm_logits(teacher, gen["input_ids"], gen["attention_mask"], *signature)
                target = gen["labels"][:, 1:]
                nll += nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
                                                   target.reshape(-1), ignore_index=-100, reduction="sum").double().cpu()
                count += int((target != -100).sum())
    finally:
        teacher.train(was)
    return float(torch.exp(nll / count)) if count else None


def score_own_samples(cfg: DictConfig, teacher: nn.Module, datamodule: L.LightningDataModule,
                      models: Dict[str, Tuple[nn.Module, Optional[StageResult]]]) -> None:
    """``teacher_ppl_of_samples.enabled``: set each stage result's ``teacher_ppl_of_samples`` (the same
    prompts, seed and ``distill.sampling`` settings for every model)."""
    node = cfg.get("teacher_ppl_of_samples") or {}
    if not node.get("enabled", False):
        return
    from ..lm import Sampling

    sampling = Sampling(**sampling_settings(cfg, datamodule))
    limit = node.get("max_prompts")
    for name, (net, result) in models.items():
        if net is None or result is None:
            continue
        t0 = time.perf_counter()
        result.teacher_ppl_of_samples = teacher_ppl_of_samples(net, teacher, datamodule, sampling, seed=int(cfg.seed),
                                                               max_prompts=int(limit) if limit else None)
        log.info("teacher perplexity of the %s's samples: %s (%.1fs)", name, result.teacher_ppl_of_samples,
                 time.perf_counter() - t0)


# ------------------------------------------------------------------------------------------- export
def save_student_hf(net: nn.Module, tokenizer: Any, path: Path, merged: bool = False) -> Optional[str]:
    """``save_pretrained`` the student with its tokenizer (loads with AutoModelForCausalLM / pipeline); a LoRA
    student writes its adapter, or with ``merged`` the model with the adapters merged in."""
    from ..lm import CausalLMDistillationModule

    if not hasattr(net, "save_pretrained"):
        log.warning("the student is a %s, not a Hugging Face model: no %s written", type(net).__name__, path)
        return None
    return CausalLMDistillationModule(student=net, tokenizer=tokenizer).save_student_pretrained(path, merged=merged)
