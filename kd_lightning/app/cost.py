"""What a model costs to serve, measured the way compression reports need it.

Deterministic figures first — multiply-accumulates per sample (``torch.utils.flop_counter``) and bytes
of weights — so a report's headline never rests on a noisy clock. Latency is measured with a warm-up,
enough repeats for a stable median, at batch 1 and at a serving batch, with the thread count fixed for
the measurement, and its spread (the interquartile range) is reported beside the median.
"""
from __future__ import annotations

import statistics
import time
from typing import Any, Dict

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ..forward import call, head


def like_net(net: nn.Module, x: Any, device: Any = None) -> Any:
    """``x`` with its floating tensors in the dtype of ``net``'s weights (and on ``device`` when given): after a
    fit at ``trainer.precision=64-true`` or ``bf16-true`` the network keeps that dtype, the data does not."""
    dtype = next((p.dtype for p in net.parameters() if p.is_floating_point()), torch.float32)

    def cast(t: Any) -> Any:
        if not isinstance(t, torch.Tensor):
            return t
        t = t if device is None else t.to(device)
        return t.to(dtype) if t.is_floating_point() else t

    return {k: cast(v) for k, v in x.items()} if isinstance(x, dict) else cast(x)


@torch.no_grad()
def macs_per_sample(net: nn.Module, example: Any) -> int:
    """Multiply-accumulates of one forward pass per sample (half the counted floating-point operations)."""
    was_training = net.training
    net.eval()
    try:
        param = next(net.parameters(), None)
        x = like_net(net, head(example, 2), param.device if param is not None else None)
        with FlopCounterMode(display=False) as counter:
            call(net, x)
        return int(counter.get_total_flops() // 2 // 2)  # two samples, two flops per MAC
    finally:
        net.train(was_training)


def weight_bytes(net: nn.Module) -> int:
    """Bytes of the parameters and buffers at their stored dtypes."""
    return sum(t.numel() * t.element_size() for t in (*net.parameters(), *net.buffers()))


@torch.no_grad()
def latency_ms(net: nn.Module, example: Any, batch: int = 1, warmup: int = 10, min_repeats: int = 30,
               min_seconds: float = 0.5, threads: int = 1) -> Dict[str, float]:
    """Median and interquartile range of a forward pass at ``batch`` samples, in ms, on the CPU."""
    device = next(net.parameters()).device
    was_training, old_threads = net.training, torch.get_num_threads()
    net.eval().cpu()
    x = like_net(net, head(example, batch), "cpu")
    torch.set_num_threads(threads)
    try:
        for _ in range(warmup):
            call(net, x)
        times, start = [], time.perf_counter()
        while len(times) < min_repeats or time.perf_counter() - start < min_seconds:
            t0 = time.perf_counter()
            call(net, x)
            times.append(1000.0 * (time.perf_counter() - t0))
            if len(times) >= 2000:
                break
    finally:
        torch.set_num_threads(old_threads)
        net.to(device).train(was_training)
    q = statistics.quantiles(times, n=4)
    return {"median": statistics.median(times), "iqr": q[2] - q[0], "repeats": len(times), "batch": batch}


def serving_cost(net: nn.Module, example: Any, serving_batch: int = 64, threads: int = 1,
                 **timing: Any) -> Dict[str, Any]:
    """The deterministic figures and the two latencies of ``net`` on samples like ``example``; ``timing``
    (warmup, min_repeats, min_seconds) goes to :func:`latency_ms`."""
    available = head(example, serving_batch)
    first = next(iter(available.values())) if isinstance(available, dict) else available
    batch = min(serving_batch, first.shape[0])
    one = latency_ms(net, example, 1, threads=threads, **timing)
    many = latency_ms(net, example, batch, threads=threads, **timing)
    return {"macs_per_sample": macs_per_sample(net, example), "weight_bytes": weight_bytes(net),
            "latency_ms": round(one["median"], 4), "latency_iqr_ms": round(one["iqr"], 4),
            "latency_serving_ms_per_sample": round(many["median"] / batch, 5),
            "latency_serving_iqr_ms": round(many["iqr"] / batch, 5), "serving_batch": batch, "threads": threads}
