"""One policy-gradient training step on a small Llama: the fused loss (`backend="auto"`) against the
eager reference loss (`backend="eager"`), side by side in one pytest-benchmark run.

A step = forward (logits B x T x V), `entropy_pg_loss` (clip-higher, dual clip, k3 KL, entropy bonus,
token-mean), backward, AdamW update. Sizes: CPU vocab 32000, hidden 256, 2 layers, batch 8 x 256 tokens;
CUDA vocab 151936, hidden 512, 2 layers, batch 8 x 1024 tokens; quick (EXPRL_BENCH_QUICK=1) vocab 16000,
hidden 128, batch 4 x 128 tokens.

    pytest benchmarks/bench_train_step.py --benchmark-enable             # full size for this machine
    EXPRL_BENCH_QUICK=1 pytest benchmarks/bench_train_step.py             # small shapes, a smoke run
    python benchmarks/bench_train_step.py [--quick]                       # the same through pytest.main

Time: median over the timed steps after one warm-up step, in this process (synchronised on CUDA).
Peak memory: each backend in its own child process (so one backend's allocator state cannot hide or
inflate the other's): after a warm-up step, CUDA max_memory_allocated minus the allocation before the
step; CPU peak RSS (VmHWM, reset through clear_refs) minus the RSS before the step.

The table goes to EXPRL_BENCH_OUT (default benchmarks/results/, or <tmp>/exprl_bench/ in quick mode) as
bench_train_step_<device>[_quick]_<date>.json and .md; the fused/eager ratios are printed.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
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

CUDA = torch.cuda.is_available()
QUICK = os.environ.get("EXPRL_BENCH_QUICK", "0") == "1"
if QUICK:
    SIZE = {"vocab": 16000, "hidden": 128, "layers": 2, "batch": 4, "seq": 128, "steps": 3}
elif CUDA:
    SIZE = {"vocab": 151936, "hidden": 512, "layers": 2, "batch": 8, "seq": 1024, "steps": 10}
else:
    SIZE = {"vocab": 32000, "hidden": 256, "layers": 2, "batch": 8, "seq": 256, "steps": 5}
BACKENDS = ["auto", "eager"]  # auto = the fused path (triton on CUDA, chunked torch on CPU)
LABELS = {"auto": "fused (auto)", "eager": "eager reference"}
# quick (smoke) runs write to the temp dir so that CI leaves the checkout clean
_DEFAULT_OUT = Path(tempfile.gettempdir()) / "exprl_bench" if QUICK else Path(__file__).parent / "results"
OUT_DIR = Path(os.environ.get("EXPRL_BENCH_OUT", _DEFAULT_OUT))

RESULTS: dict[str, dict] = {}


def make_step(backend: str, size: dict):
    """A seeded model, optimizer and batch; returns `step() -> loss` (one full training step).

    The model and the data depend only on the seeds, so both backends train the same model on the same
    batch and their losses are comparable step by step.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    from exprl.kernels import entropy_pg_loss

    torch.manual_seed(0)
    device = "cuda" if CUDA else "cpu"
    cfg = LlamaConfig(
        vocab_size=size["vocab"],
        hidden_size=size["hidden"],
        intermediate_size=4 * size["hidden"],
        num_hidden_layers=size["layers"],
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=size["seq"],
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(cfg).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    b, t = size["batch"], size["seq"]
    g = torch.Generator().manual_seed(1)
    input_ids = torch.randint(0, size["vocab"], (b, t), generator=g).to(device)
    targets = torch.roll(input_ids, -1, 1)
    mask = torch.ones(b, t, dtype=torch.bool, device=device)
    mask[:, : t // 4] = False  # the prompt part
    targets[~mask] = -100
    advantages = torch.randn(b, generator=g).to(device)
    old = (-torch.rand(b, t, generator=g) * 5).to(device)
    ref = old + 0.01 * torch.randn(b, t, generator=g).to(device)

    def step() -> float:
        logits = model(input_ids=input_ids).logits
        out = entropy_pg_loss(
            logits,
            targets,
            advantages,
            mask=mask,
            old_logprobs=old,
            ref_logprobs=ref,
            clip_low=0.2,
            clip_high=0.28,
            dual_clip=3.0,
            kl_coef=1e-3,
            entropy_coef=1e-3,
            backend=backend,
        )
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss = float(out.loss.detach())  # a host sync, also on CUDA
        return loss

    return step


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def peak_step_mib(backend: str, size: dict) -> float:
    """Peak memory of one training step above the memory held before it, after a warm-up step."""
    step = make_step(backend, size)
    step()  # warm-up: optimizer state, allocator, lazy inits
    if CUDA:
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    base = _rss_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    step()
    return (_rss_kib("VmHWM") - base) / 1024


def _peak_in_child(backend: str) -> float:
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")]),
    )
    cmd = [sys.executable, __file__, "--peak", backend, json.dumps(SIZE)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"peak-memory child for backend {backend!r} failed:\n{done.stderr[-4000:]}")
    return float(done.stdout.strip().splitlines()[-1])


@pytest.mark.benchmark(group="train-step")
@pytest.mark.parametrize("backend", BACKENDS)
def test_bench_train_step(benchmark, backend):
    step = make_step(backend, SIZE)
    step()  # warm-up: Triton compilation, optimizer state, allocator
    times: list[float] = []  # own timer; --benchmark-disable runs the step once
    losses: list[float] = []

    def timed() -> None:
        start = time.perf_counter()
        losses.append(step())  # float() of the loss synchronises the device
        times.append(time.perf_counter() - start)

    benchmark.pedantic(timed, rounds=SIZE["steps"])
    assert all(math.isfinite(x) for x in losses), losses
    RESULTS[backend] = {
        "backend": backend,
        "median_s": statistics.median(times),
        "min_s": min(times),
        "steps_timed": len(times),
        "peak_step_mib": _peak_in_child(backend),
        "losses": losses,
    }


def summary() -> dict:
    """The fused/eager ratios (None until both backends ran) and the largest loss difference."""
    fused, eager = RESULTS.get("auto"), RESULTS.get("eager")
    if not (fused and eager):
        return {}
    return {
        "time_ratio_fused_over_eager": fused["median_s"] / eager["median_s"],
        "memory_ratio_fused_over_eager": fused["peak_step_mib"] / eager["peak_step_mib"]
        if eager["peak_step_mib"] > 0
        else None,
        "max_abs_loss_difference": max(
            abs(a - b) for a, b in zip(fused["losses"], eager["losses"], strict=True)
        ),
    }


def device_info() -> dict:
    if CUDA:
        return {"device": torch.cuda.get_device_name()}
    return {"device": f"CPU {platform.processor() or platform.machine()}", "cpus": os.cpu_count()}


def write_results(out_dir: Path) -> Path:
    now = datetime.datetime.now(datetime.UTC)
    header = {
        "date": now.strftime("%Y-%m-%d %H:%M UTC"),
        **device_info(),
        "host": platform.node(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "mode": "quick" if QUICK else "full",
        "size": SIZE,
        "timing": "median over the timed steps after one warm-up step",
        "load average (1, 5, 15 min) at the end": ", ".join(f"{x:.1f}" for x in os.getloadavg()),
    }
    ratios = summary()
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / f"bench_train_step_{'cuda' if CUDA else 'cpu'}{'_quick' if QUICK else ''}_{now:%Y%m%d}"
    payload = {"header": header, "results": RESULTS, "summary": ratios}
    stem.with_suffix(".json").write_text(json.dumps(payload, indent=2) + "\n")
    lines = [f"# One training step, fused vs eager loss — {header['date']}", ""]
    lines += [f"- {key}: {value}" for key, value in header.items() if key != "date"]
    lines += [
        "",
        "| loss backend | median step (s) | min step (s) | peak step memory (MiB) |",
        "|---|---:|---:|---:|",
    ]
    for backend in BACKENDS:
        if backend in RESULTS:
            r = RESULTS[backend]
            lines.append(
                f"| {LABELS[backend]} | {r['median_s']:.3f} | {r['min_s']:.3f} | {r['peak_step_mib']:.1f} |"
            )
    if ratios:
        memory = ratios["memory_ratio_fused_over_eager"]
        lines += [
            "",
            f"time fused/eager: {ratios['time_ratio_fused_over_eager']:.2f}x, memory fused/eager: "
            + (f"{memory:.2f}x" if memory is not None else "n/a")
            + f"; largest loss difference over the timed steps: {ratios['max_abs_loss_difference']:.2e}",
        ]
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    return stem


@pytest.fixture(scope="module", autouse=True)
def write_table():
    yield
    if not RESULTS:
        return
    stem = write_results(OUT_DIR)
    ratios = summary()
    if ratios:
        memory = ratios["memory_ratio_fused_over_eager"]
        print(
            f"\ntrain step fused/eager: time {ratios['time_ratio_fused_over_eager']:.2f}x, memory "
            + (f"{memory:.2f}x" if memory is not None else "n/a")
        )
    print(f"wrote {stem}.json and {stem}.md")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small shapes (CI smoke run)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: EXPRL_BENCH_OUT)")
    args = parser.parse_args(argv)
    env = dict(os.environ)
    if args.quick:
        env["EXPRL_BENCH_QUICK"] = "1"
    if args.out is not None:
        env["EXPRL_BENCH_OUT"] = str(args.out)
    # a fresh interpreter, so that the module-level sizes read the environment set here
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        __file__,
        "-q",
        "-s",
        "-p",
        "no:cacheprovider",
        "--benchmark-enable",
    ]
    return subprocess.call(cmd, cwd=Path(__file__).parents[1], env=env)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--peak":
        print(peak_step_mib(sys.argv[2], json.loads(sys.argv[3])))
    else:
        sys.exit(main())
