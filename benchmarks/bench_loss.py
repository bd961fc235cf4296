"""Benchmark of `exprl.kernels.entropy_pg_loss`: eager (the reference) vs the fused backends.

    pytest benchmarks/bench_loss.py --benchmark-enable                      # full shapes for this machine
    EXPRL_BENCH_QUICK=1 pytest benchmarks/bench_loss.py --benchmark-enable  # small shapes, a smoke run

Cases: the loss forward+backward (off-policy, dual clip, k3 KL and entropy bonus on, token-mean),
the loss forward alone, and `logprobs_and_entropy`. Backends: eager and torch on CPU; eager and
triton on CUDA (the torch backend is a CPU path). Shapes: CPU N=4096, V=32768 in fp32 and bf16;
CUDA N=8192, V=151936 in bf16 (EXPRL_BENCH_N / EXPRL_BENCH_V override).

Reported per case: median wall time (pytest-benchmark's statistics), peak memory above the inputs
(gradient included; `common.peak_memory_mib`, a child process per case), speedup over eager, and the
achieved bandwidth (3 passes over the logits for forward+backward: read, read, write the gradient;
1 pass for forwards) as GB/s, as a fraction of a plain copy's GB/s in the same run and, on CUDA, of
the device's peak. The table goes to bench_loss_<device>[_quick]_<date>.json and .md (see common.py).
"""

from __future__ import annotations

import os

import pytest
import torch
from common import (
    CUDA,
    DEVICE,
    QUICK,
    Report,
    compare,
    copy_bandwidth_gbps,
    fmt,
    gpu_peak_gbps,
    measure,
    peak_memory_mib,
    ratio,
)

from exprl.kernels import entropy_pg_loss, logprobs_and_entropy

if QUICK:
    N, V = 64, 1000
elif CUDA:
    N, V = 8192, 151936
else:
    N, V = 4096, 32768
N = int(os.environ.get("EXPRL_BENCH_N", N))
V = int(os.environ.get("EXPRL_BENCH_V", V))
DTYPES = ["bfloat16"] if CUDA else ["float32", "bfloat16"]
BACKENDS = ["eager", "triton"] if CUDA else ["eager", "torch"]
CASES = ["loss fwd+bwd", "loss fwd", "logprobs_and_entropy fwd"]
ROUNDS = 1 if QUICK else (10 if CUDA else 3)

REPORT = Report(
    "bench_loss", "entropy_pg_loss benchmark", N=N, V=V, timing=f"median of {ROUNDS} round(s) per case"
)


def make_inputs(n: int, vocab: int, dtype: torch.dtype, device: str):
    """Inputs allocated without fp32 N x V transients (normal_ fills bf16 in place)."""
    g = torch.Generator(device=device).manual_seed(0)
    logits = torch.empty(n, vocab, dtype=dtype, device=device).normal_(0, 3, generator=g)
    targets = torch.randint(0, vocab, (n,), device=device, generator=g)
    advantages = torch.randn(n, device=device, generator=g)
    old = torch.randn(n, device=device, generator=g) * 0.1 - 8
    ref = torch.randn(n, device=device, generator=g) * 0.1 - 8
    return logits, targets, advantages, old, ref


def run_case(case: str, backend: str, inputs) -> None:
    logits, targets, advantages, old, ref = inputs
    if case == "logprobs_and_entropy fwd":
        logprobs_and_entropy(logits, targets, backend=backend)
        return
    x = logits.requires_grad_(case == "loss fwd+bwd")
    x.grad = None
    with torch.set_grad_enabled(case == "loss fwd+bwd"):
        out = entropy_pg_loss(
            x,
            targets,
            advantages,
            old_logprobs=old,
            ref_logprobs=ref,
            clip_high=0.28,
            dual_clip=3.0,
            kl_coef=1e-3,
            entropy_coef=1e-3,
            backend=backend,
        )
        if case == "loss fwd+bwd":
            out.loss.backward()
    x.grad = None


def prepare(case: str, backend: str, n: int, vocab: int, dtype: str):
    """For the peak-memory child: the inputs, a warm-up, and the call to measure.

    The warm-up loads the code paths (Triton compilation and autotuning on CUDA, with the real inputs,
    whose transients the CUDA allocator frees; on CPU with tiny inputs, since glibc keeps freed pages
    in RSS and would hide the measured call's peak).
    """
    inputs = make_inputs(n, vocab, getattr(torch, dtype), DEVICE)
    run_case(case, backend, inputs if CUDA else make_inputs(4, 64, getattr(torch, dtype), DEVICE))
    return lambda: run_case(case, backend, inputs)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_bench_loss(benchmark, backend, case, dtype):
    inputs = make_inputs(N, V, getattr(torch, dtype), DEVICE)
    run_case(case, backend, inputs)  # warm-up: Triton compilation, allocator, custom-op registration
    timing = measure(benchmark, run_case, case, backend, inputs, rounds=ROUNDS, warmup_rounds=0)
    passes = 3 if case == "loss fwd+bwd" else 1
    REPORT.add(case=case, backend=backend, dtype=dtype, N=N, V=V, median_ms=1e3 * timing.median_s,
               min_ms=1e3 * timing.min_s, rounds=timing.rounds,
               peak_mib=peak_memory_mib(__file__, case=case, backend=backend, n=N, vocab=V, dtype=dtype),
               gbps=passes * N * V * inputs[0].element_size() / timing.median_s / 1e9)  # fmt: skip


COLUMNS = {
    "case": lambda r: r["case"],
    "dtype": lambda r: r["dtype"],
    "backend": lambda r: r["backend"],
    "median ms": lambda r: fmt(r["median_ms"]),
    "speedup vs eager": lambda r: fmt(r["speedup"], ".2f", "x"),
    "peak MiB": lambda r: fmt(max(r["peak_mib"], 0), ".0f"),
    "peak vs eager": lambda r: fmt(r["memory_ratio"], ".1%"),
    "GB/s": lambda r: fmt(r["gbps"], ".1f"),
    "of copy BW": lambda r: fmt(r["copy_fraction"], ".1%"),
}
if CUDA:
    COLUMNS["of peak BW"] = lambda r: fmt(r["peak_fraction"], ".1%")


@pytest.fixture(scope="module", autouse=True)
def write_table():
    yield
    rows = REPORT.rows
    compare(rows, baseline={"backend": "eager"}, match=("case", "dtype"), metric="median_ms", name="speedup",
            baseline_over_row=True)  # fmt: skip
    compare(rows, baseline={"backend": "eager"}, match=("case", "dtype"), metric="peak_mib",
            name="memory_ratio", baseline_over_row=False)  # fmt: skip
    copy_gbps = copy_bandwidth_gbps()
    REPORT.header["copy GB/s"] = round(copy_gbps, 1)
    for row in rows:
        row["copy_fraction"] = row["gbps"] / copy_gbps
        if CUDA:
            row["peak_fraction"] = ratio(row["gbps"], gpu_peak_gbps())
    REPORT.write(COLUMNS)
