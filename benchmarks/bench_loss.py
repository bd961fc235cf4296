"""Benchmark of `exprl.kernels.entropy_pg_loss` and `logprobs_and_entropy` against eager PyTorch (the
reference) and Liger-Kernel, side by side in one run.

    pytest benchmarks/bench_loss.py --benchmark-enable                      # full shapes for this machine
    EXPRL_BENCH_QUICK=1 pytest benchmarks/bench_loss.py --benchmark-enable  # small shapes, a smoke run

Cases:
- "loss fwd+bwd": the loss and its backward with every term on for exprl and eager: off-policy ratio,
  per-token advantages, clip-higher (0.2 / 0.28), dual clip 3, k3 KL 1e-3, entropy bonus 1e-3,
  token-mean. Liger-Kernel's `triton_grpo_loss` (inplace=False, loss_type="dapo", the same clip
  bounds and KL; per-sequence advantages, no dual clip, no entropy term: it has neither).
- "logprobs fwd": exprl's `logprobs_and_entropy` (log-probs and entropies), eager's, and Liger's
  `fused_selective_log_softmax` (log-probs only).
Each for logits "(B,T,V)", contiguous, and "(B,T+1,V)" as models return them with (B, T) targets: exprl
gets the (B, T+1, V) tensor itself, eager the view `logits[:, :-1]` (the reference reads its slice),
Liger the tensor (it needs that layout, so it has no "(B,T,V)" rows).

Shapes (B, T, V): CPU (4, 1024, 32768) in fp32 and bf16 (quick: (2, 32, 1000), fp32); CUDA bf16
(8, 1024, 151936), the target, plus N = B*T = 512 and 65536 at V=151936 and (8, 1024, 32768), these
three for "(B,T+1,V)" only. Eager runs up to N x V = 8192 x 151936 (its fp32 temporaries would not fit
beyond). Peak memory (`common.peak_memory_mib`, a child process per case) is measured at the first
shape only; the others report time.

Reported per row: median wall time (pytest-benchmark's statistics), peak memory above the inputs
(gradient included), time and memory against eager, time against Liger on the same shape, case and
layout, and the bandwidth: B*T*V logits elements read or written (3 passes for fwd+bwd: read, read,
write the gradient; 1 for forwards) as GB/s and as a fraction of a copy's GB/s (device-to-device on CUDA)
measured in the same run (`common.copy_bandwidth_gbps`). Liger-Kernel is the `bench` extra
(`pip install -e .[bench]`); without it, or without CUDA (its kernels are Triton on CUDA only), its rows
are skipped with a message. Results: bench_loss_<device>[_quick]_<date>.json and .md (see common.py).
"""

from __future__ import annotations

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
    measure,
    peak_memory_mib,
    peer,
)

from exprl.kernels import entropy_pg_loss, logprobs_and_entropy

if QUICK:
    SHAPES = [(2, 32, 1000)]
elif CUDA:
    SHAPES = [(8, 1024, 151936), (8, 64, 151936), (64, 1024, 151936), (8, 1024, 32768)]
else:
    SHAPES = [(4, 1024, 32768)]
# quick (smoke) runs: one dtype, since each row's peak memory costs a child process
DTYPES = ["bfloat16"] if CUDA else ["float32"] if QUICK else ["float32", "bfloat16"]
EXPRL = "triton" if CUDA else "torch"
BACKENDS = ["eager", EXPRL, "liger"]
CASES = ["loss fwd+bwd", "logprobs fwd"]
LAYOUTS = ["(B,T,V)", "(B,T+1,V)"]
EAGER_MAX_ELEMENTS = 8192 * 151936
ROUNDS = 1 if QUICK else (10 if CUDA else 3)
OPTIONS = dict(
    clip_low=0.2, clip_high=0.28, dual_clip=3.0, kl_coef=1e-3, kl_estimator="k3", entropy_coef=1e-3
)


def _params():
    for i, (b, t, v) in enumerate(SHAPES):
        for case in CASES:
            for layout in LAYOUTS if i == 0 else LAYOUTS[1:]:
                for dtype in DTYPES:
                    for backend in BACKENDS:
                        if backend == "liger" and layout != "(B,T+1,V)":
                            continue
                        if backend == "eager" and b * t * v > EAGER_MAX_ELEMENTS:
                            continue
                        yield pytest.param(b, t, v, case, layout, dtype, backend, id=f"{b}x{t}x{v}-{case}-"
                                           f"{layout}-{dtype}-{backend}")  # fmt: skip


REPORT = Report(
    "bench_loss",
    "entropy_pg_loss benchmark: exprl vs eager PyTorch vs Liger-Kernel",
    timing=f"median of {ROUNDS} round(s) per case",
    options=", ".join(f"{k}={v}" for k, v in OPTIONS.items()),
)


def make_inputs(b: int, t: int, vocab: int, dtype: torch.dtype, layout: str, device: str) -> dict:
    """Logits ((B, T, V), or (B, T+1, V) for the shifted layout) filled in place without fp32 N x V
    transients, and the (B, T) per-token inputs; old/ref log-probs near the true ones' scale."""
    g = torch.Generator(device=device).manual_seed(0)
    positions = t + 1 if layout == "(B,T+1,V)" else t
    logits = torch.empty(b, positions, vocab, dtype=dtype, device=device).normal_(0, 3, generator=g)
    return dict(
        logits=logits,
        targets=torch.randint(0, vocab, (b, t), device=device, generator=g),
        advantages=torch.randn(b, t, device=device, generator=g),
        sequence_advantages=torch.randn(b, device=device, generator=g),
        old=torch.randn(b, t, device=device, generator=g) * 0.1 - 8,
        ref=torch.randn(b, t, device=device, generator=g) * 0.1 - 8,
    )


def _liger_loss(x, inputs):
    grpo = peer("liger_kernel.transformers.grpo_loss", "liger-kernel")
    loss, _ = grpo.triton_grpo_loss(
        x, inputs["old"], inputs["ref"], inputs["targets"], inputs["sequence_advantages"],
        temperature=1.0, beta=OPTIONS["kl_coef"], eps_low=OPTIONS["clip_low"], eps_high=OPTIONS["clip_high"],
        inplace=False, loss_type="dapo", reduce=True,
    )  # fmt: skip
    return loss


def run_case(case: str, backend: str, layout: str, inputs: dict) -> None:
    logits, targets = inputs["logits"], inputs["targets"]
    # eager reads the view a user would slice; exprl and Liger take the (B, T+1, V) tensor itself
    view = logits[:, :-1] if backend == "eager" and layout == "(B,T+1,V)" else logits
    if case == "logprobs fwd":
        if backend == "liger":
            peer("liger_kernel.ops.grpo_loss", "liger-kernel").fused_selective_log_softmax(
                logits, targets, temperature=1.0
            )
        else:
            logprobs_and_entropy(view, targets, backend=backend)
        return
    x = logits.requires_grad_()
    x.grad = None
    if backend == "liger":
        loss = _liger_loss(x, inputs)
    else:
        x_view = x[:, :-1] if view is not logits else x
        loss = entropy_pg_loss(
            x_view, targets, inputs["advantages"], old_logprobs=inputs["old"], ref_logprobs=inputs["ref"],
            backend=backend, **OPTIONS,
        ).loss  # fmt: skip
    loss.backward()
    x.grad = None


def prepare(case: str, backend: str, layout: str, b: int, t: int, vocab: int, dtype: str):
    """For the peak-memory child: the inputs, a warm-up, and the call to measure.

    The warm-up loads the code paths (Triton compilation and autotuning on CUDA, with the real inputs,
    whose transients the CUDA allocator frees; on CPU with tiny inputs, since glibc keeps freed pages
    in RSS and would hide the measured call's peak).
    """
    inputs = make_inputs(b, t, vocab, getattr(torch, dtype), layout, DEVICE)
    warmup = inputs if CUDA else make_inputs(2, 4, 64, getattr(torch, dtype), layout, DEVICE)
    run_case(case, backend, layout, warmup)
    return lambda: run_case(case, backend, layout, inputs)


@pytest.mark.parametrize(("b", "t", "vocab", "case", "layout", "dtype", "backend"), list(_params()))
def test_bench_loss(benchmark, b, t, vocab, case, layout, dtype, backend):
    if backend == "liger":
        peer("liger_kernel", "liger-kernel")
        if not CUDA:
            pytest.skip("Liger-Kernel's GRPO kernels are Triton kernels for CUDA: no CPU rows")
    inputs = make_inputs(b, t, vocab, getattr(torch, dtype), layout, DEVICE)
    run_case(case, backend, layout, inputs)  # warm-up: Triton compilation, allocator, custom-op registration
    timing = measure(benchmark, run_case, case, backend, layout, inputs, rounds=ROUNDS, warmup_rounds=0)
    first_shape = (b, t, vocab) == SHAPES[0]
    kwargs = dict(case=case, backend=backend, layout=layout, b=b, t=t, vocab=vocab, dtype=dtype)
    passes = 3 if case == "loss fwd+bwd" else 1
    logits_bytes = b * t * vocab * inputs["logits"].element_size()
    REPORT.add(shape=f"B={b} T={t} V={vocab}", case=case, layout=layout, dtype=dtype, backend=backend,
               median_ms=1e3 * timing.median_s, min_ms=1e3 * timing.min_s, rounds=timing.rounds,
               peak_mib=peak_memory_mib(__file__, **kwargs) if first_shape else None,
               gbps=passes * logits_bytes / timing.median_s / 1e9)  # fmt: skip


COLUMNS = {
    "shape": lambda r: r["shape"],
    "case": lambda r: r["case"],
    "logits": lambda r: r["layout"],
    "dtype": lambda r: r["dtype"],
    "backend": lambda r: r["backend"],
    "median ms": lambda r: fmt(r["median_ms"], ".3f"),
    "speedup vs eager": lambda r: fmt(r["speedup"], ".2f", "x"),
    "time vs Liger": lambda r: fmt(r["liger_time_ratio"], ".2f", "x"),
    "peak MiB": lambda r: fmt(None if r["peak_mib"] is None else max(r["peak_mib"], 0), ".0f"),
    "peak vs eager": lambda r: fmt(r["memory_ratio"], ".1%"),
    "GB/s": lambda r: fmt(r["gbps"], ".1f"),
    "of copy BW": lambda r: fmt(r["copy_fraction"], ".1%"),
}
NOTES = [
    "GB/s counts B*T*V logits elements per pass (fwd+bwd: 3 passes, forwards: 1) for every backend; "
    "'of copy BW' divides by the GB/s (bytes read + written) of a copy in the same run (device-to-device on "
    "CUDA, memcpy on CPU).",
    "'time vs Liger' is this row's median over Liger-Kernel's on the same shape, case and layout "
    "(below 1: faster than Liger). Liger computes no entropy and has no dual clip; exprl's rows have both.",
]


@pytest.fixture(scope="module", autouse=True)
def write_table():
    yield
    rows = REPORT.rows
    same = ("shape", "case", "layout", "dtype")
    compare(rows, baseline={"backend": "eager"}, match=same, metric="median_ms", name="speedup",
            baseline_over_row=True)  # fmt: skip
    compare(rows, baseline={"backend": "eager"}, match=same, metric="peak_mib", name="memory_ratio",
            baseline_over_row=False)  # fmt: skip
    compare(rows, baseline={"backend": "liger"}, match=same, metric="median_ms", name="liger_time_ratio",
            baseline_over_row=False)  # fmt: skip
    copy_gbps = copy_bandwidth_gbps()
    REPORT.header["copy GB/s"] = round(copy_gbps, 1)
    for row in rows:
        row["copy_fraction"] = row["gbps"] / copy_gbps
    REPORT.write(COLUMNS, notes=NOTES)
