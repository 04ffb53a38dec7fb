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
