"""Serving cost: multiply-accumulates and weight bytes by hand; latency measured with warm-up and repeats."""
from __future__ import annotations

import torch
from torch import nn

from kd_lightning.app.cost import latency_ms, macs_per_sample, serving_cost, weight_bytes


def test_macs_and_weight_bytes_by_hand():
    assert macs_per_sample(nn.Linear(10, 4), torch.randn(3, 10)) == 40
    conv = nn.Conv1d(2, 3, kernel_size=5)  # output length 16: 16 positions x 3 channels x (2 x 5) MACs
    assert macs_per_sample(conv, torch.randn(4, 2, 20)) == 16 * 3 * 10
    net = nn.Sequential(nn.Linear(10, 4), nn.BatchNorm1d(4))
    # fp32: (40 + 4) linear + (4 + 4) affine + (4 + 4) running stats; the int64 batch counter is 8 bytes
    assert weight_bytes(net) == 4 * (44 + 8 + 8) + 8
    assert weight_bytes(nn.Linear(10, 4).half()) == 2 * 44


def test_keyword_inputs_are_costed_too():
    class Kw(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(6, 2)

        def forward(self, input_ids, attention_mask):
            return self.lin(input_ids.float() * attention_mask)

    x = {"input_ids": torch.ones(4, 6), "attention_mask": torch.ones(4, 6)}
    assert macs_per_sample(Kw(), x) == 12


def test_latency_has_warm_up_repeats_a_spread_and_restores_the_network_and_threads():
    net = nn.Linear(8, 8).train()
    threads = torch.get_num_threads()
    out = latency_ms(net, torch.randn(16, 8), batch=4, min_repeats=40, min_seconds=0.0)
    assert out["repeats"] >= 40 and out["batch"] == 4 and out["iqr"] >= 0 and out["median"] > 0
    assert net.training and torch.get_num_threads() == threads
    cost = serving_cost(net, torch.randn(16, 8), serving_batch=64)
    assert cost["serving_batch"] == 16 and cost["macs_per_sample"] == 64 and cost["weight_bytes"] == 4 * 72


def test_a_network_trained_in_another_precision_is_costed_with_inputs_of_its_dtype():
    for dtype in (torch.float64, torch.bfloat16):
        net = nn.Sequential(nn.Conv1d(1, 2, 3), nn.Flatten(), nn.Linear(12, 3)).to(dtype)
        cost = serving_cost(net, torch.randn(8, 1, 8), serving_batch=4)  # float32 data, as a loader gives it
        assert cost["macs_per_sample"] == 6 * 2 * 3 + 12 * 3 and cost["latency_ms"] > 0
        assert next(net.parameters()).dtype == dtype


def test_keep_dtype_gives_the_network_back_its_dtype():
    from kd_lightning.app.stages import keep_dtype

    net = nn.Linear(3, 2)
    with keep_dtype(net):
        net.double()  # what Lightning's 64-true plugin does to the module it fits
    assert net.weight.dtype == torch.float32


def test_serving_cost_passes_the_timing_settings_to_both_latencies():
    net = nn.Linear(4, 2)
    cost = serving_cost(net, torch.randn(8, 4), warmup=0, min_repeats=3, min_seconds=0.0)
    quick = latency_ms(net, torch.randn(8, 4), 1, warmup=0, min_repeats=3, min_seconds=0.0)
    # a linear layer runs in microseconds: with min_seconds=0 exactly min_repeats passes are timed
    assert quick["repeats"] == 3 and cost["latency_ms"] > 0 and cost["serving_batch"] == 8
