"""Small causal language models built from a config (no download), and offline loading of local ones.

``transformers`` is imported inside the functions, so ``import kd_lightning`` works without it.
"""
from __future__ import annotations

import os
from typing import Any, Dict

from torch import nn

__all__ = ["build_causal_lm", "lm_preset", "LM_PRESETS", "load_causal_lm", "load_tokenizer", "count_parameters"]

# Sizes at vocab_size 2048 (tied input/output embeddings):
#   lm_teacher_1m:   hidden 128, 4 layers, 4 heads, MLP 336  -> 1,041,536 parameters
#   lm_student_150k: hidden 48, 2 layers, 4 heads, MLP 128   ->   153,840 parameters
LM_PRESETS: Dict[str, Dict[str, Any]] = {
    "lm_teacher_1m": dict(hidden_size=128, num_layers=4, num_heads=4, intermediate_size=336),
    "lm_student_150k": dict(hidden_size=48, num_layers=2, num_heads=4, intermediate_size=128),
}


def build_causal_lm(arch: str = "llama", *, vocab_size: int, hidden_size: int, num_layers: int, num_heads: int,
                    intermediate_size: int, max_position_embeddings: int = 128, tie_word_embeddings: bool = True,
                    pad_token_id: int | None = None, bos_token_id: int | None = None,
                    eos_token_id: int | None = None, **config_kwargs: Any) -> nn.Module:
    """A randomly initialised ``LlamaForCausalLM`` (``arch="llama"``) or ``GPT2LMHeadModel`` (``"gpt2"``).

    Extra keyword arguments go to the config (e.g. ``rope_theta``, ``attn_implementation``).
    """
    import transformers

    for name, value in (("vocab_size", vocab_size), ("hidden_size", hidden_size), ("num_layers", num_layers),
                        ("num_heads", num_heads), ("intermediate_size", intermediate_size),
                        ("max_position_embeddings", max_position_embeddings)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"build_causal_lm: {name} must be a positive integer, got {value!r}")
    if hidden_size % num_heads:
        raise ValueError(f"build_causal_lm: hidden_size {hidden_size} is not divisible by num_heads {num_heads}; "
                         "pick num_heads dividing it")
    tokens = dict(pad_token_id=pad_token_id, bos_token_id=bos_token_id, eos_token_id=eos_token_id)
    if arch == "llama":
        config = transformers.LlamaConfig(
            vocab_size=vocab_size, hidden_size=hidden_size, num_hidden_layers=num_layers,
            num_attention_heads=num_heads, num_key_value_heads=config_kwargs.pop("num_key_value_heads", num_heads),
            intermediate_size=intermediate_size, max_position_embeddings=max_position_embeddings,
            tie_word_embeddings=tie_word_embeddings, use_cache=False, **tokens, **config_kwargs)
        return transformers.LlamaForCausalLM(config)
    if arch == "gpt2":
        config = transformers.GPT2Config(
            vocab_size=vocab_size, n_embd=hidden_size, n_layer=num_layers, n_head=num_heads,
            n_inner=intermediate_size, n_positions=max_position_embeddings,
            tie_word_embeddings=tie_word_embeddings, use_cache=False, **tokens, **config_kwargs)
        return transformers.GPT2LMHeadModel(config)
    raise ValueError(f"build_causal_lm: arch={arch!r} is not known; use 'llama' or 'gpt2'")


def lm_preset(name: str, vocab_size: int = 2048, arch: str = "llama", **overrides: Any) -> nn.Module:
    """Build a preset by name (:data:`LM_PRESETS`), e.g. ``lm_preset("lm_teacher_1m", vocab_size=2048)``."""
    if name not in LM_PRESETS:
        raise ValueError(f"unknown LM preset {name!r}; choose one of {', '.join(sorted(LM_PRESETS))}")
    kwargs = {**LM_PRESETS[name], **overrides}
    return build_causal_lm(arch, vocab_size=vocab_size, **kwargs)


def load_causal_lm(name_or_path: str | os.PathLike, **kwargs: Any) -> nn.Module:
    """``AutoModelForCausalLM.from_pretrained`` from local files only (nothing is downloaded)."""
    import transformers

    if name_or_path is None or not str(name_or_path):
        raise ValueError("no model directory given; set name_or_path to a local directory made by save_pretrained "
                         "(config.json + weights)")
    from .local_files import check_model_dir

    check_model_dir(name_or_path)
    try:
        return transformers.AutoModelForCausalLM.from_pretrained(os.fspath(name_or_path), local_files_only=True, **kwargs)
    except OSError:
        raise ValueError(
            f"model {os.fspath(name_or_path)!r} is not on this machine and nothing is downloaded; point at a local "
            "directory made by save_pretrained (config.json + weights), e.g. one saved with "
            "AutoModelForCausalLM.from_pretrained(name).save_pretrained(dir) where the hub is reachable") from None


def load_tokenizer(name_or_path: str | os.PathLike, **kwargs: Any) -> Any:
    """``AutoTokenizer.from_pretrained`` from local files only (nothing is downloaded)."""
    import transformers

    try:
        return transformers.AutoTokenizer.from_pretrained(os.fspath(name_or_path), local_files_only=True, **kwargs)
    except (OSError, ValueError):
        raise ValueError(
            f"tokenizer {os.fspath(name_or_path)!r} is not on this machine and nothing is downloaded; point at a local "
            "directory made by tokenizer.save_pretrained (tokenizer.json / tokenizer_config.json)") from None


def count_parameters(model: nn.Module) -> int:
    """Distinct parameters (tied weights counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
