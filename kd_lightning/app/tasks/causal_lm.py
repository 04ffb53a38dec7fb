"""Causal language models (logits ``[batch, tokens, vocab]``): next-token cross-entropy on labels,
perplexity and bits per byte, stored top-k next-token teacher outputs, sequences the models write
themselves (on-policy and sequence-level KD), and the Hugging Face (plus ONNX) export."""
from __future__ import annotations

import copy
import functools
import logging
import shutil
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from ...losses import Loss, TokenKD
from ..build import build_module_factory
from ..checks import check_causal_lm_config, check_export_format, check_lm, check_top_k_width, teacher_outputs_root
from ..errors import ConfigError
from ..stage import Measure, StageResult, count_params, state_dict_bytes
from .base import ModuleFactory, Task

log = logging.getLogger(__name__)


class CausalLM(Task):
    name = "causal_lm"
    curve_key = "val/ppl"
    lm = True

    def __init__(self, cfg: Optional[DictConfig] = None):
        super().__init__(cfg)
        plain = (lambda node: OmegaConf.to_container(node, resolve=True) if node is not None else {})  # noqa: E731
        self.outputs_root = teacher_outputs_root(cfg) if cfg is not None else None
        self.outputs_top_k = cfg.distill.get("teacher_outputs_top_k") if cfg is not None else None
        self.samples = plain(cfg.get("samples")) if cfg is not None else {}
        self.sampling = plain(cfg.distill.get("sampling")) if cfg is not None else {}
        self.on_policy_lam = (cfg.distill.get("on_policy") or {}).get("lam") if cfg is not None else None
        self.sequence_kd = bool(cfg.distill.get("sequence_kd", False)) if cfg is not None else False
        self.divergence = cfg.distill.get("divergence") if cfg is not None else None
        self.own_samples = plain(cfg.get("teacher_ppl_of_samples")) if cfg is not None else {}
        self.seed = int(cfg.seed) if cfg is not None else 0
        self.seqkd_dir = str(Path(cfg.paths.cache_dir) / "seqkd") if cfg is not None else None
        self.prompts: List[str] = list(self.samples.get("prompts") or [])
        # A LoRA student (student.lora): also write the model with the adapters merged in.
        lora = (cfg.get("student") or {}).get("lora") if cfg is not None else None
        self.export_merged = bool((lora or {}).get("export_merged", False))
        # student_tokenizer: the baseline and the student get a tokenizer of their own (the teacher keeps the data's).
        self.student_tokenizer = plain(cfg.get("student_tokenizer")) if cfg is not None else {}

    def check_config(self, cfg: DictConfig, loss: Loss) -> None:
        check_causal_lm_config(cfg, loss)

    def check_network(self, net: nn.Module, datamodule: L.LightningDataModule, role: str) -> None:
        check_lm(net, datamodule, role)

    def labels_only_loss(self) -> Loss:
        """The teacher's and the baseline's objective: next-token cross-entropy on the labels, no teacher."""
        return TokenKD(ce_weight=1.0, kd_weight=0.0)

    def module_factory(self, module_cfg: DictConfig, datamodule: L.LightningDataModule) -> ModuleFactory:
        """``module`` (a partial of CausalLMDistillationModule) with the data's tokenizer bound."""
        return functools.partial(build_module_factory(module_cfg), tokenizer=datamodule.tokenizer)

    # -------------------------------------------------------------------- the teacher stage
    def teacher_budget(self, cfg: DictConfig) -> Dict[str, int]:
        return {"max_steps": int(cfg.teacher_fit.get("max_steps") or 0)}

    def pretrained_teacher(self, cfg: DictConfig) -> Optional[str]:
        """``teacher=hf_local`` or ``teacher_fit.max_steps=0``: test the teacher's weights as they are."""
        net = cfg.teacher.get("net") or {}
        if not cfg.teacher_fit.get("max_steps") or net.get("model_name") == "hf_local":
            return str(net.get("name_or_path") or "")
        return None

    def store_key_parts(self, datamodule: L.LightningDataModule) -> Dict[str, Any]:
        from ...cache.fingerprint import fingerprint_tokenizer

        # Data modules that cut their rows otherwise than the teacher's say how (CrossTokenizerTextDataModule).
        return {"tokenizer_sha256": fingerprint_tokenizer(datamodule.tokenizer), **getattr(datamodule, "key_parts", {})}

    def student_datamodule(self, datamodule: L.LightningDataModule) -> L.LightningDataModule:
        """``student_tokenizer`` set: the same documents with the student's own tokenizer (trained on the
        training documents, or loaded from ``student_tokenizer.path``), each row tokenized by both."""
        return student_tokenizer_data(self.student_tokenizer, datamodule)

    def saved_student_data(self, cfg: DictConfig, datamodule: L.LightningDataModule) -> L.LightningDataModule:
        """A student trained with a tokenizer of its own is evaluated and exported with that tokenizer."""
        node = cfg.get("student_tokenizer")
        return student_tokenizer_data(OmegaConf.to_container(node, resolve=True) if node else {}, datamodule)

    # -------------------------------------------------------------------- the student stage
    def measure(self, datamodule: L.LightningDataModule) -> Measure:
        settings = {k: v for k, v in self.samples.items() if k != "prompts"}
        return MeasureLM(datamodule.tokenizer, self.prompts, seed=self.seed, **settings)

    def teacher_outputs(self, teacher: nn.Module, loss: Loss,
                        datamodule: L.LightningDataModule) -> Optional[L.LightningDataModule]:
        """The training set's top-k next-token teacher distribution, stored once (keyed by the teacher's
        weights, the tokenizer, the data, k and T) and served with every batch."""
        if self.outputs_root is None:
            return None
        from ...cache import TeacherOutputsError
        from ...cache.tokens import TeacherOutputsTokenDataModule

        width = vocab_width(teacher)
        check_top_k_width(self.outputs_top_k, width)
        top_k = int(self.outputs_top_k or width)
        stored = TeacherOutputsTokenDataModule(datamodule, teacher, self.outputs_root, tokenizer=datamodule.tokenizer,
                                       top_k=top_k, temperature=loss.temperature)
        t0 = time.perf_counter()
        try:
            store = stored.prepare_outputs()
        except TeacherOutputsError as err:
            raise ConfigError(str(err)) from None
        stored.prepare_s = round(time.perf_counter() - t0, 2)  # built (teacher forward over the data) or opened
        log.info("teacher top-%d outputs stored in %.1fs: %r", top_k, stored.prepare_s, store)
        return stored

    def teacher_outputs_module_args(self) -> Dict[str, Any]:
        return {"teacher_outputs": True}

    def student_data(self, teacher: nn.Module,
                     datamodule: L.LightningDataModule) -> Tuple[L.LightningDataModule, Dict[str, Any]]:
        """``distill.sequence_kd`` (the data become the teacher's completions of the training prompts) and
        ``distill.on_policy.lam`` (GKD's OnPolicy)."""
        from ...lm import OnPolicy, Sampling, SequenceKDDataModule

        settings = sampling_settings(self.sampling, datamodule)
        extra: Dict[str, Any] = {}
        teacher_tokenizer = getattr(datamodule, "teacher_tokenizer", None)
        if teacher_tokenizer is not None:  # the student has a tokenizer of its own
            extra.update(teacher_tokenizer=teacher_tokenizer, student_tokenizer=datamodule.tokenizer)
        if self.on_policy_lam is not None:
            extra["on_policy"] = OnPolicy(lam=float(self.on_policy_lam), **settings)
        if self.sequence_kd:
            datamodule = SequenceKDDataModule(datamodule, teacher, cache_dir=self.seqkd_dir,
                                              sampling=Sampling(**settings), batch_size=64, seed=self.seed)
        return datamodule, extra

    def describe_teacher_outputs(self, result: StageResult, stored: L.LightningDataModule, loss: Loss) -> None:
        described = outputs_summary(stored)
        result.teacher_outputs = {**described, "tail": loss.topk_tail} if described else None

    def after_students(self, teacher: nn.Module, datamodule: L.LightningDataModule,
                       models: Dict[str, Tuple[Optional[nn.Module], Optional[StageResult]]]) -> None:
        """``teacher_ppl_of_samples.enabled``: each model's ``teacher_ppl_of_samples`` (the same prompts,
        seed and ``distill.sampling`` settings for every model)."""
        if not self.own_samples.get("enabled", False):
            return
        from ...lm import Sampling

        sampling = Sampling(**sampling_settings(self.sampling, datamodule))
        limit = self.own_samples.get("max_prompts")
        for name, (net, result) in models.items():
            if net is None or result is None:
                continue
            t0 = time.perf_counter()
            result.teacher_ppl_of_samples = teacher_ppl_of_samples(net, teacher, datamodule, sampling, seed=self.seed,
                                                                   max_prompts=int(limit) if limit else None)
            log.info("teacher perplexity of the %s's samples: %s (%.1fs)", name, result.teacher_ppl_of_samples,
                     time.perf_counter() - t0)

    # ------------------------------------------------------------------------- the report
    def report_extra(self, student: nn.Module, datamodule: L.LightningDataModule, out_dir: Any,
                     primary: bool) -> Dict[str, Any]:
        # The export is nested, so that a sweep table (summary.json flattened) does not take it for a setting.
        hf_dir = Path(out_dir) / "student_hf"
        export = {"student_hf": save_student_hf(student, datamodule.tokenizer, hf_dir) if primary else None}
        if primary and self.export_merged:  # a LoRA student: the base with its adapters merged in, too
            export["student_hf_merged"] = save_student_hf(student, datamodule.tokenizer,
                                                          hf_dir.with_name("student_hf_merged"), merged=True)
        extra = {"distill": {"divergence": self.divergence}, "task": self.name, "prompts": list(self.prompts),
                 "export": export}
        teacher_tokenizer = getattr(datamodule, "teacher_tokenizer", None)
        if teacher_tokenizer is not None:  # bits per byte then compare the models (report.build_lm_summary)
            from ...lm.xtok import tokenizer_name

            extra["tokenizers"] = {"teacher": tokenizer_name(teacher_tokenizer),
                                   "student": tokenizer_name(datamodule.tokenizer)}
        return extra

    # --------------------------------------------------------------- a saved student (kd-eval, kd-export)
    def evaluate(self, net: nn.Module, datamodule: L.LightningDataModule,
                 trainer: L.Trainer) -> Tuple[Dict[str, float], str]:
        from ...lm import CausalLMDistillationModule

        module = CausalLMDistillationModule(student=net, loss=self.labels_only_loss(), tokenizer=datamodule.tokenizer)
        metrics = {k: float(v) for k, v in trainer.test(module, datamodule=datamodule, verbose=False)[0].items()}
        return metrics, f"test/ppl: {metrics['test/ppl']:.3f}  test/bpb: {metrics['test/bpb']:.4f}"

    def export(self, net: nn.Module, datamodule: L.LightningDataModule, ckpt_path: Path, output: Optional[str],
               fmt: str, atol: float, rtol: float, merged: bool = False) -> Dict[str, Any]:
        """The Hugging Face directory (``<ckpt stem>_hf_export`` beside the checkpoint, ``_hf_merged`` with
        ``merged``, or ``output``; never over an existing one), checked by loading it back as a user would
        (``AutoModelForCausalLM``; a LoRA adapter with ``peft`` onto the student's own base); with
        ``format=onnx`` also ``model.onnx`` in it, when the model exports (a model that does not is reported,
        the directory is still written)."""
        from ..exporters import check_match, export_onnx

        check_export_format(fmt, ("onnx", "hf"), "a language model (hf: the Hugging Face directory, onnx: it "
                                                "plus model.onnx)")
        out = Path(output) if output else ckpt_path.with_name(f"{ckpt_path.stem}_hf_{'merged' if merged else 'export'}")
        if out.exists():
            raise ConfigError(f"output={str(out)!r} already exists (kd-train writes student_hf/ itself); pass "
                              "output=<a new directory>")
        datamodule.setup("test")  # builds or opens the tokenizer the directory ships with
        try:
            written = save_student_hf(net, datamodule.tokenizer, out, merged=merged)
        except TypeError as err:  # merged=true for a student without adapters
            raise ConfigError(f"merged=true: {err}") from None
        if written is None:
            raise ConfigError(f"the student is a {type(net).__name__}, not a Hugging Face model; kd-export writes "
                              "Hugging Face causal LMs only")
        ids = next(iter(datamodule.test_dataloader()))["input_ids"][:2]
        net.eval()
        with torch.no_grad():
            expected = lm_logits_of(net, ids)
            max_err = check_match(lm_logits_of(read_hf(out, net), ids), expected, atol, rtol)
        what = "merged model" if merged else "adapter" if (out / "adapter_config.json").is_file() else "model"
        result: Dict[str, Any] = {"path": str(out), "format": "hf", "merged": merged, "max_abs_error": max_err}
        print(f"exported {out} (Hugging Face {what}); it loads back and its logits match the checkpoint "
              f"on {ids.shape[0]} test sequences (max abs error {max_err:.2e})")
        if fmt == "onnx":
            onnx_path = out / "model.onnx"
            try:
                got = export_onnx(LogitsOnly(net), ids, onnx_path, input_name="input_ids", dynamic=(0, 1),
                                  dynamo=True)
                onnx_err = check_match(got, expected, atol, rtol)
            except Exception as err:  # not every architecture traces to ONNX: the directory stands on its own
                onnx_path.unlink(missing_ok=True)
                result["onnx"] = None
                print(f"no ONNX file: the model does not export ({str(err).splitlines()[0][:200]})")
            else:
                result.update(onnx=str(onnx_path), onnx_max_abs_error=onnx_err)
                print(f"exported {onnx_path} (onnx); logits match the checkpoint (max abs error {onnx_err:.2e})")
        return result


def student_tokenizer_data(node: Dict[str, Any], datamodule: L.LightningDataModule) -> L.LightningDataModule:
    """``datamodule`` (no ``student_tokenizer`` node), or its documents with the student's own tokenizer
    (:class:`~kd_lightning.lm.xtok.CrossTokenizerTextDataModule`), set up."""
    if not node:
        return datamodule
    from ...lm.xtok import CrossTokenizerTextDataModule

    try:
        data = CrossTokenizerTextDataModule(datamodule, student_tokenizer=node.get("path"),
                                            student_tokenizer_kind=node.get("kind", "unigram"),
                                            student_vocab_size=int(node.get("vocab_size", 2048)),
                                            validation_every=node.get("validation_every"))
        data.setup("fit")
    except (ValueError, TypeError, FileNotFoundError) as err:
        raise ConfigError(f"student_tokenizer: {err}") from None
    return data


class LogitsOnly(nn.Module):
    """``input_ids -> logits`` of a Hugging Face causal LM (what ONNX tracing needs: one tensor in, one out)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.net(input_ids=input_ids, use_cache=False).logits


def lm_logits_of(net: nn.Module, ids: torch.Tensor):
    return LogitsOnly(net)(ids).float().numpy()


# ------------------------------------------------------------------------------ stored teacher outputs
def vocab_width(net: nn.Module) -> Optional[int]:
    """The number of logits a causal LM returns per token, when its output layer tells."""
    head = net.get_output_embeddings() if hasattr(net, "get_output_embeddings") else None
    if isinstance(head, nn.Linear):
        return int(head.out_features)
    size = getattr(getattr(net, "config", None), "vocab_size", None)
    return int(size) if size else None


def outputs_summary(datamodule: L.LightningDataModule) -> Optional[Dict[str, Any]]:
    """What the report says about stored teacher outputs (None when the student distilled online)."""
    store = getattr(datamodule, "outputs", None)
    if store is None or not hasattr(store, "bytes_per_token"):
        return None
    return {"top_k": store.top_k, "temperature": store.temperature, "tokens": store.num_tokens,
            "bytes": store.nbytes(), "bytes_per_token": round(store.bytes_per_token(), 2),
            "dense_fp32_bytes_per_token": 4 * store.vocab_size, "prepare_s": getattr(datamodule, "prepare_s", None),
            "path": str(store.directory)}



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
        # Each model samples with its own data's tokenizer (a student may have one of its own).
        tokenizer = getattr(datamodule, "tokenizer", None) or self.tokenizer
        latency, tokens_per_s = forward_speed(net, ids)
        get = lambda k: float(test[k]) if k in test else None  # noqa: E731
        return StageResult(
            name=name, acc=None, params=count_params(net), size_bytes=state_dict_bytes(net), latency_ms=latency,
            wall_s=round(wall_s, 2), agreement=get("test/agreement"), ppl=get("test/ppl"), bpb=get("test/bpb"),
            tokens_per_s=round(tokens_per_s, 1),
            samples=sample_continuations(net, tokenizer, self.prompts, **self.sampling), **extra)



# ------------------------------------------------------------------- sequences the models write themselves
def sampling_settings(node: Dict[str, Any], datamodule: L.LightningDataModule) -> Dict[str, Any]:
    """:class:`~kd_lightning.lm.generation.Sampling` arguments: ``distill.sampling`` (``node``) plus the data's
    end-of-sequence and padding tokens and its prompt length (``prompt_tokens``, for data without one)."""
    node = node or {}
    tokenizer = datamodule.tokenizer
    top_k = node.get("top_k")
    return dict(max_new_tokens=int(node.get("max_new_tokens", 32)), temperature=float(node.get("temperature", 1.0)),
                top_k=int(top_k) if top_k else None, eos_token_id=tokenizer.eos_token_id,
                pad_token_id=int(tokenizer.pad_token_id),
                prompt_tokens=int(getattr(datamodule, "prompt_tokens", 0) or 32))


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
    from ...forward import call_signature, lm_logits
    from ...lm import on_policy_batch

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


# ------------------------------------------------------------------------------------------- export
def read_hf(path: Path, net: nn.Module) -> nn.Module:
    """A directory :func:`save_student_hf` wrote, loaded as a user would: an adapter with ``peft`` onto a copy
    of ``net``'s own base (adapters removed), anything else with ``AutoModelForCausalLM``."""
    if (path / "adapter_config.json").is_file():
        import peft

        return peft.PeftModel.from_pretrained(copy.deepcopy(net).unload(), str(path)).eval()
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path)).eval()


def save_student_hf(net: nn.Module, tokenizer: Any, path: Path, merged: bool = False) -> Optional[str]:
    """``save_pretrained`` the student with its tokenizer (loads with AutoModelForCausalLM / pipeline; a LoRA
    student writes its adapter, or with ``merged`` the model with the adapters merged in), written beside
    ``path`` and renamed into place, so a reader never sees half a directory."""
    from ...lm import CausalLMDistillationModule
    from ...models.local_files import write_checksums

    if not hasattr(net, "save_pretrained"):
        log.warning("the student is a %s, not a Hugging Face model: no %s written", type(net).__name__, path)
        return None
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    CausalLMDistillationModule(student=net, tokenizer=tokenizer).save_student_pretrained(tmp, merged=merged)
    write_checksums(tmp)  # a teacher=hf_local run, or check_model_dir, refuses a changed copy
    shutil.rmtree(path, ignore_errors=True)
    tmp.rename(path)
    return str(path)
