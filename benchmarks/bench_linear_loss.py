"""Benchmark of `exprl.kernels.linear_entropy_pg_loss` (the lm_head fused with the loss) against the paths a
user has without it, side by side in one run.

    pytest benchmarks/bench_linear_loss.py --benchmark-enable                      # full shapes
    EXPRL_BENCH_QUICK=1 pytest benchmarks/bench_linear_loss.py --benchmark-enable  # small shapes, smoke run

Paths, each from the final hidden states (B, T, H) and the lm_head weight (V, H), both trainable:
- `fused linear`: `linear_entropy_pg_loss` (backend auto: triton + cuBLAS on CUDA, torch on CPU);
- `materialised`: logits = hidden @ weight.T, then `entropy_pg_loss` (backend auto);
- `eager`: the same logits, then the eager reference loss (plain PyTorch autograd);
- `liger`: Liger-Kernel's `LigerFusedLinearGRPOLoss` (compiled), where installed (`common.peer`).
Loss: off-policy, clip 0.2/0.28, k3 KL (1e-3) to reference log-probs, token-mean; exprl's paths also
use dual clip (3) and an entropy bonus (1e-3), which Liger does not have; advantages one per sequence.
Cases: the loss forward+backward (gradients of hidden and weight), and the forward-only log-probs and
entropies (`linear_logprobs_and_entropy` against `logprobs_and_entropy` on materialised logits; Liger has
no such call).

Shapes: CPU B=4, T=1024 (N=4096), H=512, V=32768 in fp32; CUDA B=8, T=1024 and 4096, H=2560, V=151936 in
bf16 (eager left out at T=4096: its fp32 N x V temporaries pass 60 GB). EXPRL_BENCH_T overrides T.

Reported per case: median wall time (pytest-benchmark's statistics), peak memory above the inputs
(gradients included; `common.peak_memory_mib`, a child process per case), and the ratios of both to the
materialised path and to eager. The table goes to bench_linear_loss_<device>[_quick]_<date>.json and .md.
"""

from __future__ import annotations

import math
import os

import pytest
import torch
import torch.nn.functional as F
from common import CUDA, DEVICE, QUICK, Report, compare, fmt, measure, peak_memory_mib, peer

from exprl.kernels import (
    entropy_pg_loss,
    linear_entropy_pg_loss,
    linear_logprobs_and_entropy,
    logprobs_and_entropy,
)

if QUICK:
    B, TS, H, V = 2, [32], 32, 1000
elif CUDA:
    B, TS, H, V = 8, [1024, 4096], 2560, 151936
else:
    B, TS, H, V = 4, [1024], 512, 32768
if "EXPRL_BENCH_T" in os.environ:
    TS = [int(os.environ["EXPRL_BENCH_T"])]
DTYPE = "bfloat16" if CUDA else "float32"
PATHS = ["fused linear", "materialised", "eager", "liger"]
CASES = ["loss fwd+bwd", "logprobs fwd"]
ROUNDS = 1 if QUICK else (10 if CUDA else 3)
LOSS = dict(clip_low=0.2, clip_high=0.28, kl_coef=1e-3)
EXPRL_ONLY = dict(dual_clip=3.0, entropy_coef=1e-3)

REPORT = Report("bench_linear_loss", "linear_entropy_pg_loss benchmark", B=B, H=H, V=V, dtype=DTYPE,
                timing=f"median of {ROUNDS} round(s) per case")  # fmt: skip


def make_inputs(batch: int, time: int, dtype: torch.dtype):
    """hidden (B, T, H) and weight (V, H) that need gradients, logits of scale ~2; per-token log-probs."""
    g = torch.Generator(device=DEVICE).manual_seed(0)
    hidden = torch.randn(batch, time, H, device=DEVICE, generator=g).to(dtype).requires_grad_()
    weight = (torch.randn(V, H, device=DEVICE, generator=g) * (2 / math.sqrt(H))).to(dtype).requires_grad_()
    targets = torch.randint(0, V, (batch, time), device=DEVICE, generator=g)
    advantages = torch.randn(batch, device=DEVICE, generator=g)
    old = torch.randn(batch, time, device=DEVICE, generator=g) * 0.1 - 11
    ref = torch.randn(batch, time, device=DEVICE, generator=g) * 0.1 - 11
    return hidden, weight, targets, advantages, old, ref


def liger_loss():
    """Liger's fused linear GRPO loss with our settings (token-mean is its "dapo" loss type)."""
    peer("liger_kernel", "liger-kernel")
    from liger_kernel.chunked_loss import LigerFusedLinearGRPOLoss

    return LigerFusedLinearGRPOLoss(
        beta=LOSS["kl_coef"], epsilon_low=LOSS["clip_low"], epsilon_high=LOSS["clip_high"], loss_type="dapo"
    )


def run_case(case: str, path: str, inputs, liger=None) -> None:
    hidden, weight, targets, advantages, old, ref = inputs
    hidden.grad = weight.grad = None
    if case == "logprobs fwd":
        with torch.no_grad():
            if path == "fused linear":
                linear_logprobs_and_entropy(hidden, weight, targets)
            else:
                backend = "eager" if path == "eager" else "auto"
                logprobs_and_entropy(F.linear(hidden, weight), targets, backend=backend)
        return
    if path == "liger":
        mask = torch.ones_like(targets)
        out = liger(
            hidden, weight, targets, mask, advantages, ref_per_token_logps=ref, old_per_token_logps=old
        )
        loss = out[0] if isinstance(out, tuple) else out
    elif path == "fused linear":
        options = dict(old_logprobs=old, ref_logprobs=ref, **LOSS, **EXPRL_ONLY)
        loss = linear_entropy_pg_loss(hidden, weight, targets, advantages, **options).loss
    else:
        options = dict(old_logprobs=old, ref_logprobs=ref, backend="eager" if path == "eager" else "auto")
        loss = entropy_pg_loss(
            F.linear(hidden, weight), targets, advantages, **options, **LOSS, **EXPRL_ONLY
        ).loss
    loss.backward()
    hidden.grad = weight.grad = None


def prepare(case: str, path: str, time: int, dtype: str):
    """For the peak-memory child: the inputs, a warm-up, and the call to measure.

    The warm-up loads the code paths (Triton and torch.compile on CUDA with the real inputs, whose
    transients the CUDA allocator frees; on CPU with small inputs, since glibc keeps freed pages in RSS
    and would hide the measured call's peak).
    """
    liger = liger_loss() if path == "liger" else None
    inputs = make_inputs(B, time, getattr(torch, dtype))
    run_case(case, path, inputs if CUDA else make_inputs(1, 8, getattr(torch, dtype)), liger)
    return lambda: run_case(case, path, inputs, liger)


@pytest.mark.parametrize("time", TS)
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("path", PATHS)
def test_bench_linear_loss(benchmark, path, case, time):
    if path == "liger" and case == "logprobs fwd":
        pytest.skip("Liger-Kernel has no forward-only log-prob call")
    if CUDA and path == "eager" and time > 1024:
        pytest.skip("eager at T > 1024 holds several fp32 N x V temporaries (> 60 GB): left out")
    liger = liger_loss() if path == "liger" else None
    inputs = make_inputs(B, time, getattr(torch, DTYPE))
    run_case(case, path, inputs, liger)  # warm-up: Triton and torch.compile compilation, allocator
    timing = measure(benchmark, run_case, case, path, inputs, liger, rounds=ROUNDS, warmup_rounds=0)
    peak = peak_memory_mib(__file__, case=case, path=path, time=time, dtype=DTYPE)
    REPORT.add(case=case, path=path, T=time, N=B * time, median_ms=1e3 * timing.median_s,
               min_ms=1e3 * timing.min_s, rounds=timing.rounds, peak_mib=peak)  # fmt: skip


COLUMNS = {
    "case": lambda r: r["case"],
    "T": lambda r: str(r["T"]),
    "path": lambda r: r["path"],
    "median ms": lambda r: fmt(r["median_ms"]),
    "time vs materialised": lambda r: fmt(r["time_vs_materialised"], ".2f", "x"),
    "peak MiB": lambda r: fmt(max(r["peak_mib"], 0), ".0f"),
    "peak vs materialised": lambda r: fmt(r["memory_vs_materialised"], ".1%"),
    "peak vs eager": lambda r: fmt(r["memory_vs_eager"], ".1%"),
}


@pytest.fixture(scope="module", autouse=True)
def write_table():
    yield
    rows = REPORT.rows
    for base in ("materialised", "eager"):
        compare(rows, baseline={"path": base}, match=("case", "T"), metric="peak_mib",
                name=f"memory_vs_{base}", baseline_over_row=False)  # fmt: skip
    compare(rows, baseline={"path": "materialised"}, match=("case", "T"), metric="median_ms",
            name="time_vs_materialised", baseline_over_row=False)  # fmt: skip
    notes = [
        "time vs materialised: this path's time over the materialised path's (lower is faster); peak: memory "
        "above the inputs during one call, gradients included, as a fraction of the baseline's."
    ]
    REPORT.write(COLUMNS, notes=notes)
