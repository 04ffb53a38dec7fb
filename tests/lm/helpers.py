"""Tiny language models and batches shared by the LM tests (importable by spawned DDP workers)."""
import torch
from torch import nn


class TinyLM(nn.Module):
    """A causal LM: embeddings, a running mean over the past, a non-linearity and a vocabulary head."""

    def __init__(self, vocab: int = 13, hidden: int = 8, out: str = "tensor", seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.emb = nn.Embedding(vocab, hidden)
        self.mix = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, vocab)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.7)
        self.out = out

    def forward(self, input_ids):
        h = self.emb(input_ids)
        steps = torch.arange(1, input_ids.shape[1] + 1, device=h.device, dtype=h.dtype)[None, :, None]
        h = torch.cumsum(h, 1) / steps
        logits = self.head(torch.tanh(self.mix(h)))
        if self.out == "tuple":
            return (logits, h)
        return logits


class Out:
    def __init__(self, logits):
        self.logits = logits


class ObjectLM(TinyLM):
    def forward(self, input_ids, attention_mask=None):
        return Out(super().forward(input_ids))


def ragged_batch(lengths, width=12, vocab=13, seed=0, prompt=2):
    """Right-padded sequences of the given lengths; the first ``prompt`` labels of each are -100."""
    g = torch.Generator().manual_seed(seed)
    n = len(lengths)
    ids = torch.randint(0, vocab, (n, width), generator=g)
    mask = torch.zeros(n, width, dtype=torch.long)
    for i, length in enumerate(lengths):
        mask[i, :length] = 1
    ids = ids.masked_fill(mask == 0, 0)
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :prompt] = -100
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def rows(batch):
    """A batch dict as a list of per-sequence dicts (a map-style dataset)."""
    n = batch["input_ids"].shape[0]
    return [{k: v[i] for k, v in batch.items()} for i in range(n)]


def fsdp_gather_worker(rank: int, port: int, out_path: str) -> None:
    """One of two gloo ranks: shard a CausalLMDistillationModule (tiny Llama student and teacher) with torch's FSDP
    on the CPU, take an optimizer step, gather the full state dict on rank 0 as Lightning's FSDPStrategy does
    (``state_dict_type="full"``), send it to both ranks and load its student keys into a plain copy of the student.
    Rank 0 writes what the test checks to ``out_path``."""
    import json
    import os

    import torch.distributed as dist
    from torch.distributed.fsdp import FullStateDictConfig, FullyShardedDataParallel, ShardingStrategy, StateDictType

    from kd_lightning import CausalLMDistillationModule
    from kd_lightning.app.stage import load_student_weights
    from kd_lightning.lm.sharding import decoder_layer_policy
    from kd_lightning.models.lm import build_causal_lm

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        def lm(seed):
            torch.manual_seed(seed)
            return build_causal_lm("llama", vocab_size=32, hidden_size=16, num_layers=2, num_heads=2,
                                   intermediate_size=32)

        module = CausalLMDistillationModule(student=lm(0), teacher=lm(1))
        wrapped = FullyShardedDataParallel(module, auto_wrap_policy=decoder_layer_policy(), use_orig_params=True,
                                           sharding_strategy=ShardingStrategy.FULL_SHARD,
                                           device_id=torch.device("cpu"))
        optimizer = torch.optim.AdamW(module.trainable_parameters(), lr=1e-2)
        ids = torch.randint(0, 32, (2, 8), generator=torch.Generator().manual_seed(rank))
        wrapped(ids).float().logsumexp(-1).mean().backward()
        optimizer.step()
        config = FullStateDictConfig(offload_to_cpu=True, rank0_only=True)
        with FullyShardedDataParallel.state_dict_type(wrapped, StateDictType.FULL_STATE_DICT, config):
            state = wrapped.state_dict()
        box = [state]
        dist.broadcast_object_list(box, src=0)
        plain = load_student_weights(lm(0), box[0])
        probe = torch.arange(8).reshape(1, 8)
        with torch.no_grad():
            sharded_logits = wrapped(probe)
            plain_logits = plain(probe).logits
            untrained = lm(0)(probe).logits
        if rank == 0:
            with open(out_path, "w") as f:
                json.dump({"max_diff": float((sharded_logits - plain_logits).abs().max()),
                           "moved": float((untrained - plain_logits).abs().max()),
                           "teacher_keys": sum(k.startswith("teacher.") for k in box[0]),
                           "inner_numel": sum(p.numel() for p in module.student.parameters()),
                           "plain_numel": sum(p.numel() for p in plain.parameters())}, f)
    finally:
        dist.destroy_process_group()
