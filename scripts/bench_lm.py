#!/usr/bin/env python
"""Peak memory and time of a token-level distillation loss, forward + backward: naive, chunked, fused.

Inputs are made once per subprocess, in bf16, from a fixed seed: the teacher's logits ``[N, V]`` (or its final
hidden states ``[N, H_t]`` and output embedding ``W_t [V, H_t]``) and the student's final hidden states
``[N, H]`` and output embedding ``W [V, H]``. The forms, each computing the forward KL and the gradients the
student needs:

  naive             student logits [N, V] (requiring grad) → the straightforward composite token_divergence
                    (whole-batch fp32 upcast, autograd through every op: the form before chunking, kept as
                    kd_lightning.losses.functional.token._unchunked_token_divergence)
  chunked           the same student logits → token_divergence (chunked over tokens, gradient in the forward)
  naive_head        hidden, W → logits = hidden @ Wᵀ → the naive form; gradients for hidden and W
  fused             hidden, W → token_divergence_fused(hidden, W, teacher_logits): the student's logits never
                    exist in full
  naive_both_heads  hidden, W and the teacher's hidden_t, W_t → both models' logits (the teacher's without a
                    graph) → the naive form
  fused_both        the same inputs → token_divergence_fused(hidden, W, teacher_hidden=hidden_t,
                    teacher_lm_head_weight=W_t): neither model's logits exist in full

chunked is compared with naive (the loss from the logits, as the issue's "loss forward + backward"), fused
with naive_head and fused_both with naive_both_heads (the same computation from the same inputs, output
layers included: a fused form's inputs are hidden states and weights by construction, so the matmuls and
W's gradient are counted on both sides). The JSON's ``<form>_over_naive_*`` are those ratios;
``per_vocab`` has every form against its baseline.

Each (form, vocabulary) runs in its own subprocess, one after the other. On the CPU the peak is the
subprocess's peak resident set (VmHWM) above the resident set of its warmed-up runtime (Python, torch,
kd_lightning: about 0.8 GiB, reset through /proc/self/clear_refs just before the inputs are made), so it
counts the inputs, their gradients and the loss's work, like ``max_memory_allocated`` on a GPU; the raw
process peaks are in the JSON too (``process_peak_mib``). The time is the wall time of one forward +
backward (after one small warm-up on other shapes); on a GPU (when one is available, or ``--device cuda``)
the peak is ``torch.cuda.max_memory_allocated`` (inputs included) and the time is the median of
``--repeats`` synchronized runs after a warm-up.

**Why the CPU peak is repeatable.** A resident-set peak counts pages, so it follows whatever the C
allocator keeps, not only live tensors. Two things made it wander (the fused ratio read 0.196 once and
0.212 in a rerun): (1) the inputs were made as ``randn(...) * 2``, so for a moment an unscaled copy of the
teacher's logits (or of W) lived beside the scaled one; that transient, not the loss, was the fused forms'
whole peak. Inputs are now scaled in place. (2) glibc's malloc raises its mmap threshold each time a
mapped block is freed (up to 32 MiB); blocks under the new threshold then come from the heap, where freed
memory stays resident in amounts that depend on the order of earlier frees and on which thread (each with
its own arena) freed them: the same fused run measured 664 MiB with that and 641 MiB without. The workers
(only they: the environment of their subprocess) run with ``MALLOC_MMAP_THRESHOLD_`` set to glibc's own
default, 128 KiB, which switches the adjustment off: every tensor above it is its own mapping, returned to
the system when freed, so the resident set follows the live tensors page by page. Every worker also runs
on the same number of torch threads (``--threads``, default torch's here), which fixes the per-thread
scratch of the matmul libraries. What still moves is the largest forms' peak by up to ~100 MiB of 13 GiB
(under 0.003 in a ratio): VmHWM counts the libraries' file-backed pages too, which the kernel may evict
while such a form presses on a shared machine.

Targets (the issue): chunked ≤ 0.35 × naive peak, fused ≤ 0.2 × naive_head peak, fused_both ≤ 0.15 ×
naive_both_heads peak, each ≤ 1.15 × its baseline's time. The last line printed is one JSON object with
chunked_over_naive_peak, fused_over_naive_peak, fused_both_over_naive_peak and the three ``*_time`` (the
worst over the vocabulary sizes) and the details.

    python scripts/bench_lm.py                  # V = 32,000 and 128,256, 4,096 tokens, H = H_t = 2,048, bf16
    python scripts/bench_lm.py --quick          # small shapes, seconds (a smoke test)

The naive forms at V = 128,256 need about 13 GiB of memory on the CPU; the script checks MemAvailable
first and refuses (naming the shortfall) rather than pushing a shared machine into swap or the OOM killer.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

FORMS = ("naive", "chunked", "naive_head", "fused", "naive_both_heads", "fused_both")
BASELINE = {"chunked": "naive", "fused": "naive_head", "naive_head": "naive", "fused_both": "naive_both_heads",
            "naive_both_heads": "naive"}
TARGETS = {"chunked_over_naive_peak": 0.35, "fused_over_naive_peak": 0.2, "fused_both_over_naive_peak": 0.15,
           "chunked_over_naive_time": 1.15, "fused_over_naive_time": 1.15, "fused_both_over_naive_time": 1.15}
COMPARED = ("chunked", "fused", "fused_both")
MMAP_THRESHOLD = 128 * 1024
# the *_both* forms' teacher is a hidden state times an output layer: their loss is the naive_both_heads one
SAME_LOSS = {"naive_both_heads": "naive_both_heads", "fused_both": "naive_both_heads"}  # the forms whose ratios to their baselines are the summary


def _worker(args: argparse.Namespace) -> None:
    import torch

    from kd_lightning.losses.functional import token_divergence, token_divergence_fused
    from kd_lightning.losses.functional.token import _unchunked_token_divergence

    device = torch.device(args.device)
    torch.set_num_threads(args.threads)  # this worker only: every form runs on the same number of threads
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    n, v, h = args.tokens, args.vocab, args.hidden

    h_t = args.teacher_hidden or h

    def make(tokens: int, vocab: int, seed: int = 0):
        g = torch.Generator(device=device).manual_seed(seed)
        hidden = torch.randn(tokens, h, generator=g, device=device, dtype=dtype)
        # scaled in place: a scaled copy would be a transient second input at the peak (it was the fused
        # forms' whole peak before: randn and randn * 2 of the teacher's logits side by side)
        weight = torch.randn(vocab, h, generator=g, device=device, dtype=dtype).div_(h ** 0.5)
        if args.form in ("naive_both_heads", "fused_both"):  # the teacher as hidden states and output layer
            t_hidden = torch.randn(tokens, h_t, generator=g, device=device, dtype=dtype)
            t_weight = torch.randn(vocab, h_t, generator=g, device=device, dtype=dtype).mul_(2 / h_t ** 0.5)
            teacher = [t_hidden, t_weight]
        else:
            teacher = [torch.randn(tokens, vocab, generator=g, device=device, dtype=dtype).mul_(2)]
        if args.form in ("naive", "chunked"):  # the loss from the student's logits
            with torch.no_grad():
                logits = hidden @ weight.T
            return [logits.requires_grad_()], teacher
        return [hidden.requires_grad_(), weight.requires_grad_()], teacher

    def step(student, teacher):
        kw = dict(divergence=args.divergence, temperature=args.temperature)
        if args.form == "naive":
            loss = _unchunked_token_divergence(student[0], teacher[0], **kw)
        elif args.form == "chunked":
            loss = token_divergence(student[0], teacher[0], chunk_size=args.chunk_size, **kw)
        elif args.form == "naive_head":
            loss = _unchunked_token_divergence(student[0] @ student[1].T, teacher[0], **kw)
        elif args.form == "fused":
            loss = token_divergence_fused(student[0], student[1], teacher[0], chunk_size=args.chunk_size, **kw)
        elif args.form == "naive_both_heads":
            with torch.no_grad():  # a frozen teacher's logits
                teacher_logits = teacher[0] @ teacher[1].T
            loss = _unchunked_token_divergence(student[0] @ student[1].T, teacher_logits, **kw)
        else:
            loss = token_divergence_fused(student[0], student[1], teacher_hidden=teacher[0],
                                          teacher_lm_head_weight=teacher[1], chunk_size=args.chunk_size, **kw)
        loss.backward()
        return float(loss.detach())

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    # warm-up on small shapes (kernels, allocator, lazy imports) without raising the peak
    warm = make(min(n, 64), min(v, 512), seed=1)
    step(*warm)
    del warm
    runtime = _reset_peak_rss() if device.type == "cpu" else 0
    inputs = make(n, v)
    sync()
    times, loss = [], None
    repeats = args.repeats if device.type == "cuda" else 1
    if device.type == "cuda":
        step(*inputs)  # full-size warm-up
        for x in inputs[0]:
            x.grad = None
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    for _ in range(repeats):
        for x in inputs[0]:
            x.grad = None
        sync()
        start = time.perf_counter()
        loss = step(*inputs)
        sync()
        times.append(time.perf_counter() - start)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = _status_bytes("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    grad_norm = float(torch.stack([x.grad.float().norm() for x in inputs[0]]).norm())
    print(json.dumps({"peak_bytes": peak - runtime, "process_peak_bytes": peak, "runtime_bytes": runtime,
                      "seconds": statistics.median(times), "loss": loss, "grad_norm": grad_norm}))


def _status_bytes(field: str) -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _reset_peak_rss() -> int:
    """Return the resident set of the warmed-up runtime (Python, torch, kd_lightning) and restart the peak
    (VmHWM) from it, so that the peak measures the loss's inputs and work only; 0 where /proc cannot do it."""
    import ctypes
    import gc
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return 0
    return _status_bytes("VmRSS")


def _worker_env() -> dict:
    """The workers' environment: glibc's mmap threshold fixed at its default (128 KiB), so that every large
    allocation is its own mapping, given back to the system when freed (see the module docstring)."""
    return dict(os.environ, MALLOC_MMAP_THRESHOLD_=str(MMAP_THRESHOLD))


def _mem_available() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _naive_cpu_estimate(tokens: int, vocab: int, hidden: int) -> int:
    # measured: at most 25 bytes per logit at the naive forms' peak (bf16 inputs and gradient, ~5 fp32
    # [tokens, vocab] temporaries), plus W, its gradient and the teacher's W (the both-heads forms), plus the
    # runtime (about 0.86 GB); 15.0 GB measured for naive_both_heads at V = 128,256, 15.6 GB estimated
    return int(tokens * vocab * 25 + 3 * vocab * hidden * 2 + 0.9e9)


def _machine(device: str, threads: int) -> dict:
    import torch
    info = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "torch": torch.__version__, "threads": threads, "device": device,
            "malloc_mmap_threshold": MMAP_THRESHOLD}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu_model"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vocabs", default="32000,128256", help="comma-separated vocabulary sizes")
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--hidden", type=int, default=2048, help="student hidden size H (Llama-3.2-1B: 2048)")
    parser.add_argument("--teacher-hidden", type=int, default=None,
                        help="teacher hidden size of the *_both* forms (default: H)")
    parser.add_argument("--dtype", default="bf16", choices=("bf16", "fp16", "fp32"))
    parser.add_argument("--divergence", default="forward")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--chunk-size", type=int, default=None, help="rows per chunk (default: the library's)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads of every worker (default: torch's default here, recorded in the JSON)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs on a GPU (the CPU times one)")
    parser.add_argument("--forms", default=",".join(FORMS))
    parser.add_argument("--quick", action="store_true", help="small shapes: V = 512, 1024; 64 tokens; H = 32")
    parser.add_argument("--no-memory-check", action="store_true", help="skip the MemAvailable check")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--form", help=argparse.SUPPRESS)
    parser.add_argument("--vocab", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.device is None:
        import torch
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.threads is None:
        import torch
        args.threads = torch.get_num_threads()
    if args.worker:
        _worker(args)
        return 0
    if args.quick:
        args.vocabs, args.tokens, args.hidden = "512,1024", 64, 32
    vocabs = [int(x) for x in args.vocabs.split(",")]
    forms = [f for f in args.forms.split(",") if f]
    if any(f not in FORMS for f in forms) or any(BASELINE.get(f, f) not in forms for f in forms):
        parser.error(f"--forms must be among {FORMS}, each with its baseline ({BASELINE})")
    if args.device == "cpu" and not args.no_memory_check:
        need, have = _naive_cpu_estimate(args.tokens, max(vocabs), args.hidden), _mem_available()
        if have is not None and need > 0.9 * have:
            print(f"bench_lm: the naive form at V={max(vocabs)}, {args.tokens} tokens needs about {need / 2**30:.1f} "
                  f"GiB and only {have / 2**30:.1f} GiB are available; free memory or pass smaller --tokens/--vocabs "
                  "(--no-memory-check to try anyway)", file=sys.stderr)
            return 2

    results: dict = {}
    for vocab in vocabs:
        results[vocab] = {}
        for form in forms:
            cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--form", form, "--vocab", str(vocab),
                   "--tokens", str(args.tokens), "--hidden", str(args.hidden), "--dtype", args.dtype,
                   "--divergence", args.divergence, "--temperature", str(args.temperature),
                   "--device", args.device, "--repeats", str(args.repeats)]
            if args.teacher_hidden is not None:
                cmd += ["--teacher-hidden", str(args.teacher_hidden)]
            if args.chunk_size is not None:
                cmd += ["--chunk-size", str(args.chunk_size)]
            run = subprocess.run(cmd + ["--threads", str(args.threads)], capture_output=True, text=True,
                                 env=_worker_env())
            if run.returncode != 0:
                print(f"bench_lm: {form} at V={vocab} failed (exit {run.returncode}):\n{run.stderr[-2000:]}",
                      file=sys.stderr)
                return 1
            results[vocab][form] = json.loads(run.stdout.strip().splitlines()[-1])
            r = results[vocab][form]
            print(f"  V={vocab:>7} {form:<16} peak {r['peak_bytes'] / 2**20:9.1f} MiB  {r['seconds']:8.3f} s  "
                  f"loss {r['loss']:.6f}", flush=True)

    summary: dict = {}
    per_vocab: dict = {}
    print(f"\nforward KL forward+backward, {args.tokens} tokens, H={args.hidden}, {args.dtype}, on {args.device}")
    print(f"{'V':>8} {'form':<16} {'peak MiB':>10} {'x base':>7} {'seconds':>9} {'x base':>7} {'loss rel diff':>14}  base")
    for vocab in vocabs:
        per_vocab[str(vocab)] = {}
        for form in forms:
            r = results[vocab][form]
            naive = results[vocab][BASELINE.get(form, form)]
            peak_ratio = r["peak_bytes"] / naive["peak_bytes"]
            time_ratio = r["seconds"] / naive["seconds"]
            same = results[vocab].get(SAME_LOSS.get(form, "naive"), naive)  # the naive form on the same teacher
            rel = abs(r["loss"] - same["loss"]) / max(abs(same["loss"]), 1e-30)
            per_vocab[str(vocab)][form] = {"baseline": BASELINE.get(form, form),
                                          "peak_over_baseline": round(peak_ratio, 4),
                                          "time_over_baseline": round(time_ratio, 4),
                                          "peak_mib": round(r["peak_bytes"] / 2**20, 1),
                                          "process_peak_mib": round(r["process_peak_bytes"] / 2**20, 1),
                                          "seconds": round(r["seconds"], 4), "loss": r["loss"],
                                          "loss_rel_diff_vs_naive": rel, "grad_norm": r["grad_norm"]}
            print(f"{vocab:>8} {form:<16} {r['peak_bytes'] / 2**20:>10.1f} {peak_ratio:>7.3f} {r['seconds']:>9.3f} "
                  f"{time_ratio:>7.3f} {rel:>14.2e}  {BASELINE.get(form, form)}")
            if form in COMPARED:
                for kind, value in (("peak", peak_ratio), ("time", time_ratio)):
                    key = f"{form}_over_naive_{kind}"
                    summary[key] = max(summary.get(key, 0.0), round(value, 4))
    met = {f"{k}<={v}": summary[k] <= v for k, v in TARGETS.items() if k in summary}
    print("targets: " + ", ".join(f"{k} {'met' if ok else 'MISSED'}" for k, ok in met.items()))
    out = dict(summary)
    out.update({"targets_met": met, "tokens": args.tokens, "hidden": args.hidden, "dtype": args.dtype,
                "divergence": args.divergence, "vocabs": vocabs, "chunk_size": args.chunk_size,
                "per_vocab": per_vocab, "machine": _machine(args.device, args.threads)})
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
