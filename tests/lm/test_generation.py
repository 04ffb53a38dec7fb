"""On-policy data (GKD): prompts, sampled continuations, the loss only on generated tokens, λ."""
from __future__ import annotations

import functools
import random

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from kd_lightning import CausalLMDistillationModule
from kd_lightning.lm.generation import OnPolicy, Sampling, continuation_batch, on_policy_batch, prompt_length, sample
from kd_lightning.losses import TokenKD

from .helpers import TinyLM, ragged_batch, rows


def test_prompt_length_is_the_shortest_unlabelled_prefix_or_the_default():
    batch = ragged_batch([12, 9, 6], prompt=3)
    assert prompt_length(batch["labels"], batch["attention_mask"], default=5) == 3
    plain = ragged_batch([12, 9, 6], prompt=0)  # every token labelled: plain text
    assert prompt_length(plain["labels"], plain["attention_mask"], default=4) == 4
    assert prompt_length(plain["labels"], plain["attention_mask"], default=50) == 5  # short of the shortest


def test_continuation_batch_labels_generated_tokens_up_to_the_first_eos():
    seq = torch.tensor([[5, 6, 7, 2, 8, 9], [5, 6, 7, 8, 9, 7]])
    out = continuation_batch(seq, prompt_len=2, eos_token_id=2)
    assert out["labels"].tolist() == [[-100, -100, 7, 2, -100, -100], [-100, -100, 7, 8, 9, 7]]
    assert out["attention_mask"].tolist() == [[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]]


def test_sampling_keeps_the_prompt_and_adds_max_new_tokens_without_gradient():
    model = TinyLM(vocab=13, seed=0)
    prompt = torch.randint(0, 13, (3, 4))
    torch.manual_seed(0)
    out = sample(model.train(), prompt, Sampling(max_new_tokens=5))
    assert out.shape == (3, 9) and torch.equal(out[:, :4], prompt) and not out.requires_grad
    assert model.training  # restored
    torch.manual_seed(0)
    assert torch.equal(out, sample(model, prompt, Sampling(max_new_tokens=5)))  # seeded: reproducible


def test_hugging_face_models_generate_with_their_kv_cache():
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64)
    model = transformers.LlamaForCausalLM(config)
    batch = ragged_batch([10, 10], width=10, vocab=32, prompt=4)
    out = on_policy_batch(model, batch, Sampling(max_new_tokens=6, eos_token_id=None))
    assert out["input_ids"].shape == (2, 10) and torch.equal(out["input_ids"][:, :4], batch["input_ids"][:, :4])
    assert (out["labels"][:, :4] == -100).all() and (out["labels"][:, 4:] >= 0).all()


def test_lam_draws_as_often_as_it_says():
    random.seed(0)
    draws = [OnPolicy(lam=0.3).draw() for _ in range(2000)]
    assert 0.27 < sum(draws) / len(draws) < 0.33
    assert not any(OnPolicy(lam=0.0).draw() for _ in range(100)) and all(OnPolicy(lam=1.0).draw() for _ in range(100))
    with pytest.raises(ValueError, match="lam=1.5 must be in"):
        OnPolicy(lam=1.5)


def test_on_policy_needs_labels_positions_and_a_teacher():
    with pytest.raises(ValueError, match="kd_positions='labels'"):
        CausalLMDistillationModule(TinyLM(), TinyLM(seed=1), loss=TokenKD(), on_policy=OnPolicy())


def test_fully_on_policy_steps_train_on_the_students_own_tokens(tmp_path):
    seen = []

    class Spy(TinyLM):
        def forward(self, input_ids):
            seen.append(input_ids.clone())
            return super().forward(input_ids)

    data = rows(ragged_batch([12] * 8, prompt=4, seed=3))
    module = CausalLMDistillationModule(
        TinyLM(seed=0), Spy(seed=1), loss=TokenKD(kd_positions="labels"),
        optimizer=functools.partial(torch.optim.SGD, lr=0.1),
        on_policy=OnPolicy(lam=1.0, max_new_tokens=8, prompt_tokens=4))
    L.Trainer(accelerator="cpu", max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False, default_root_dir=str(tmp_path)).fit(
        module, DataLoader(data, batch_size=4))
    original = torch.stack([d["input_ids"] for d in data])
    assert len(seen) == 2 and all(s.shape == (4, 12) for s in seen)
    # the teacher scored the prompts of the data followed by tokens the student wrote
    assert torch.equal(seen[0][:, :4], original[:4, :4]) and not torch.equal(seen[0][:, 4:], original[:4, 4:])
