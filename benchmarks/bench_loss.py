"""Benchmark of `exprl.kernels.entropy_pg_loss`: eager (the reference) vs the fused backends.

    pytest benchmarks/bench_loss.py --benchmark-enable          # full shapes for this machine
    EXPRL_BENCH_QUICK=1 pytest benchmarks/bench_loss.py          # small shapes, a smoke run in seconds

Cases: the loss forward+backward (off-policy, dual clip, k3 KL and entropy bonus on, token-mean),
the loss forward alone, and `logprobs_and_entropy`. Backends: eager and torch on CPU; eager and
triton on CUDA (the torch backend is a CPU path). Shapes: CPU N=4096, V=32768 in fp32 and bf16;
CUDA N=8192, V=151936 in bf16 (EXPRL_BENCH_N / EXPRL_BENCH_V override).

Reported per case: median wall time, peak memory above the inputs (gradient included), speedup
over eager, and on CUDA the achieved bandwidth (3 passes over the logits for forward+backward:
read, read, write the gradient; 1 pass for forwards) as GB/s and as a fraction of the device's peak.
Peak memory on CPU: a child process per case, peak RSS (VmHWM, reset once the inputs are allocated)
minus the RSS with the inputs allocated; in quick mode it is measured in-process the same way
(cheaper, may undercount by the few MB glibc keeps from earlier cases). On CUDA:
torch.cuda.max_memory_allocated minus the allocation with the inputs.

The table goes to EXPRL_BENCH_OUT (default benchmarks/results/, or <tmp>/exprl_bench/ in quick mode)
as bench_loss_<device>[_quick]_<date>.json and .md.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

from exprl.kernels import entropy_pg_loss, logprobs_and_entropy

CUDA = torch.cuda.is_available()
QUICK = os.environ.get("EXPRL_BENCH_QUICK", "0") == "1"
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
# quick (smoke) runs write to the temp dir so that CI leaves the checkout clean
_DEFAULT_OUT = Path(tempfile.gettempdir()) / "exprl_bench" if QUICK else Path(__file__).parent / "results"
OUT_DIR = Path(os.environ.get("EXPRL_BENCH_OUT", _DEFAULT_OUT))
# HBM peak bandwidth in GB/s of the data-centre GPUs we expect; others use clock x bus width
PEAK_GBPS = {"H100 SXM": 3350, "H100 80GB HBM3": 3350, "H100 PCIe": 2000, "H100 NVL": 3900, "H200": 4800,
             "A100-SXM4-80GB": 2039, "A100-SXM4-40GB": 1555, "A100 80GB PCIe": 1935}  # fmt: skip

RESULTS: list[dict] = []


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


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def peak_rss_delta_mib(case: str, backend: str, n: int, vocab: int, dtype: str) -> float:
    """Peak RSS of one run above the RSS with inputs allocated (Linux VmHWM, reset via clear_refs)."""
    inputs = make_inputs(n, vocab, getattr(torch, dtype), "cpu")
    run_case(case, backend, make_inputs(4, 64, getattr(torch, dtype), "cpu"))  # load code paths first
    base = _rss_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")
    run_case(case, backend, inputs)
    return (_rss_kib("VmHWM") - base) / 1024


def _cpu_peak_mib(case: str, backend: str, dtype: str) -> float:
    if QUICK:
        return peak_rss_delta_mib(case, backend, N, V, dtype)
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")]),
    )
    cmd = [sys.executable, __file__, "--peak", case, backend, str(N), str(V), dtype]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
    return float(done.stdout.strip().splitlines()[-1])


def _cuda_peak_mib(case: str, backend: str, inputs) -> float:
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    run_case(case, backend, inputs)
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def _timed(fn) -> float:
    if CUDA:
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if CUDA:
        torch.cuda.synchronize()
    return time.perf_counter() - start


def device_info() -> dict:
    if not CUDA:
        return {
            "device": f"CPU {platform.processor() or platform.machine()}",
            "threads": torch.get_num_threads(),
        }
    props = torch.cuda.get_device_properties(0)
    peak = next((v for k, v in PEAK_GBPS.items() if k in props.name), None)
    if peak is None and getattr(props, "memory_clock_rate", 0) and getattr(props, "memory_bus_width", 0):
        peak = 2 * props.memory_clock_rate * 1e3 * props.memory_bus_width / 8 / 1e9
    return {"device": props.name, "peak_gbps": peak}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_bench_loss(benchmark, backend, case, dtype):
    device = "cuda" if CUDA else "cpu"
    inputs = make_inputs(N, V, getattr(torch, dtype), device)
    run_case(case, backend, inputs)  # warm-up: Triton compilation, allocator, custom-op registration
    times: list[float] = []  # own timer (synchronising on CUDA); --benchmark-disable runs it once
    benchmark.pedantic(lambda: times.append(_timed(lambda: run_case(case, backend, inputs))), rounds=ROUNDS)
    peak = _cuda_peak_mib(case, backend, inputs) if CUDA else _cpu_peak_mib(case, backend, dtype)
    median = statistics.median(times)
    row = {"case": case, "backend": backend, "dtype": dtype, "N": N, "V": V, "median_ms": 1e3 * median,
           "rounds": len(times), "peak_mib": peak}  # fmt: skip
    if CUDA:
        passes = 3 if case == "loss fwd+bwd" else 1
        row["gbps"] = passes * N * V * inputs[0].element_size() / median / 1e9
        info = device_info()
        row["peak_fraction"] = row["gbps"] / info["peak_gbps"] if info.get("peak_gbps") else None
    RESULTS.append(row)


def _markdown(rows: list[dict], header: dict) -> str:
    lines = [f"# entropy_pg_loss benchmark — {header['date']}", ""]
    lines += [f"- {k}: {v}" for k, v in header.items() if k != "date"]
    cols = ["case", "dtype", "backend", "median ms", "speedup vs eager", "peak MiB", "peak vs eager"]
    if CUDA:
        cols += ["GB/s", "of peak BW"]
    lines += ["", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = [r["case"], r["dtype"], r["backend"], f"{r['median_ms']:.2f}", _fmt(r.get("speedup"), "x"),
                 f"{max(r['peak_mib'], 0):.0f}", _fmt(r.get("memory_ratio"), "%", 100)]  # fmt: skip
        if CUDA:
            cells += [f"{r['gbps']:.0f}", _fmt(r.get("peak_fraction"), "%", 100)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _fmt(value, unit, factor=1):
    return "-" if value is None else f"{value * factor:.1f}{unit}" if unit == "%" else f"{value:.2f}{unit}"


@pytest.fixture(scope="module", autouse=True)
def write_table():
    yield
    if not RESULTS:
        return
    for row in RESULTS:
        eager = next(
            r
            for r in RESULTS
            if (r["case"], r["dtype"], r["backend"]) == (row["case"], row["dtype"], "eager")
        )
        row["speedup"] = eager["median_ms"] / row["median_ms"]
        row["memory_ratio"] = row["peak_mib"] / eager["peak_mib"] if eager["peak_mib"] > 0 else None
    now = datetime.datetime.now(datetime.UTC)
    header = {
        "date": now.strftime("%Y-%m-%d %H:%M UTC"),
        **device_info(),
        "host": platform.node(),
        "torch": torch.__version__,
        "triton": _triton_version(),
        "mode": "quick" if QUICK else "full",
        "timing": f"median of {RESULTS[0]['rounds']} run(s) per case",
        "load average (1, 5, 15 min) at the end": ", ".join(f"{x:.1f}" for x in os.getloadavg()),
    }
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    tag = "cuda" if CUDA else "cpu"
    stem = OUT_DIR / f"bench_loss_{tag}{'_quick' if QUICK else ''}_{now.strftime('%Y%m%d')}"
    stem.with_suffix(".json").write_text(json.dumps({"header": header, "results": RESULTS}, indent=2) + "\n")
    stem.with_suffix(".md").write_text(_markdown(RESULTS, header))


def _triton_version() -> str | None:
    try:
        import triton
    except ImportError:
        return None
    return triton.__version__


if __name__ == "__main__" and len(sys.argv) == 7 and sys.argv[1] == "--peak":
    _, _, case_, backend_, n_, v_, dtype_ = sys.argv
    print(peak_rss_delta_mib(case_, backend_, int(n_), int(v_), dtype_))
