"""Sequences the student (or the teacher) writes itself: on-policy distillation (GKD) and sequence-level KD.

GKD (Agarwal et al., ICLR 2024): with probability ``λ`` a training step replaces the batch's
continuations by ones the student samples from the batch's prompts; the teacher then scores those
tokens and the divergence is taken on the generated tokens only (the prompt, and everything after the
first end-of-sequence token, carry no loss). ``λ = 0`` is plain supervised KD, ``λ = 1`` fully on-policy.
Sequence-level KD (Kim & Rush 2016) trains on the teacher's own completions, written once
(:class:`~kd_lightning.lm.seqkd.SequenceKDDataModule`).
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Dict, Optional

import torch
from torch import Tensor, nn

from ..losses.token import IGNORE_INDEX


@dataclass
class Sampling:
    """How continuations are sampled: ``max_new_tokens`` after a prompt of at most ``prompt_tokens``."""

    max_new_tokens: int = 32
    temperature: float = 1.0
    top_k: Optional[int] = None
    # Prompts: each sequence's tokens before its first labelled one (prompt/response data); for plain
    # text, where every token is labelled, the first ``prompt_tokens`` tokens.
    prompt_tokens: int = 32
    eos_token_id: Optional[int] = None
    pad_token_id: int = 0

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens={self.max_new_tokens} must be >= 1")
        if not self.temperature > 0:
            raise ValueError(f"temperature={self.temperature} must be > 0 (sampling); use a small value for "
                             "near-greedy decoding")
        if self.prompt_tokens < 1:
            raise ValueError(f"prompt_tokens={self.prompt_tokens} must be >= 1")


@dataclass
class OnPolicy(Sampling):
    """GKD's student-generated data: each training step is on-policy with probability ``lam``."""

    lam: float = 0.5

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.lam <= 1.0:
            raise ValueError(f"lam={self.lam} must be in [0, 1] (0: supervised, 1: fully on-policy)")

    def draw(self) -> bool:
        """Whether this step generates (Python's RNG, which ``seed_everything`` seeds)."""
        return self.lam >= 1.0 or (self.lam > 0.0 and random.random() < self.lam)


def prompt_length(labels: Tensor, attention_mask: Tensor, default: int) -> int:
    """One prompt length for the batch: the shortest per-sequence prompt (tokens before the first
    labelled one), or ``default`` when a sequence is labelled from its first token; at least 1 token,
    and short of the shortest sequence."""
    labelled = (labels != IGNORE_INDEX) & (attention_mask > 0)
    first = torch.where(labelled.any(1), labelled.float().argmax(1), torch.full_like(labels[:, 0], labels.shape[1]))
    per_seq = torch.where(first == 0, torch.full_like(first, default), first)
    shortest = int(attention_mask.sum(1).min())
    return max(1, min(int(per_seq.min()), shortest - 1 if shortest > 1 else 1))


@torch.no_grad()
def sample(model: nn.Module, prompt: Tensor, cfg: Sampling) -> Tensor:
    """``[B, P + max_new_tokens]`` token ids: the prompt and sampled continuations, without gradient.

    Hugging Face models use their ``generate`` (with the KV cache); any other module mapping ids to
    logits is run step by step on the growing sequence.
    """
    was_training = model.training
    model.eval()
    try:
        if hasattr(model, "generate") and hasattr(model, "config"):
            kwargs = dict(do_sample=True, temperature=cfg.temperature, top_k=cfg.top_k or 0,
                          max_new_tokens=cfg.max_new_tokens, min_new_tokens=cfg.max_new_tokens if cfg.eos_token_id is None else 0,
                          pad_token_id=cfg.pad_token_id, use_cache=True,
                          attention_mask=torch.ones_like(prompt))
            if cfg.eos_token_id is not None:
                kwargs["eos_token_id"] = cfg.eos_token_id
            out = model.generate(prompt, **kwargs)
        else:
            out = prompt
            for _ in range(cfg.max_new_tokens):
                logits = model(out)
                logits = getattr(logits, "logits", logits)
                nxt = logits[:, -1].float() / cfg.temperature
                if cfg.top_k:
                    kth = nxt.topk(cfg.top_k, dim=-1).values[:, -1:]
                    nxt = nxt.masked_fill(nxt < kth, float("-inf"))
                out = torch.cat([out, torch.multinomial(nxt.softmax(-1), 1)], dim=1)
    finally:
        model.train(was_training)
    width = prompt.shape[1] + cfg.max_new_tokens
    if out.shape[1] < width:  # generation stopped early everywhere: pad to a fixed width
        out = torch.cat([out, out.new_full((out.shape[0], width - out.shape[1]), cfg.pad_token_id)], dim=1)
    return out


def continuation_batch(sequences: Tensor, prompt_len: int, eos_token_id: Optional[int]) -> Dict[str, Tensor]:
    """The training batch of generated ``sequences``: labels on the generated tokens up to and including
    the first end-of-sequence token; the prompt and whatever follows that token carry no loss and are not
    attended to beyond it."""
    generated = torch.zeros_like(sequences, dtype=torch.bool)
    generated[:, prompt_len:] = True
    live = torch.ones_like(sequences, dtype=torch.bool)
    if eos_token_id is not None:
        is_eos = (sequences == eos_token_id) & generated
        after = (is_eos.cumsum(1) - is_eos.long()) > 0  # strictly after the first generated EOS
        live &= ~after
    labels = sequences.masked_fill(~(generated & live), IGNORE_INDEX)
    return {"input_ids": sequences, "attention_mask": live.long(), "labels": labels}


def on_policy_batch(model: nn.Module, batch: Dict[str, Tensor], cfg: Sampling) -> Dict[str, Tensor]:
    """Replace ``batch``'s continuations by ``model``'s own samples from its prompts."""
    ids = batch["input_ids"]
    mask = batch.get("attention_mask")
    mask = torch.ones_like(ids) if mask is None else mask
    labels = batch.get("labels")
    labels = ids.masked_fill(mask == 0, IGNORE_INDEX) if labels is None else labels
    p = prompt_length(labels, mask, cfg.prompt_tokens)
    return continuation_batch(sample(model, ids[:, :p], cfg), p, cfg.eos_token_id)
