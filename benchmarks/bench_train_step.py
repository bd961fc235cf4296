"""One policy-gradient training step on a small Llama: the fused loss (`backend="auto"`) against the
eager reference loss (`backend="eager"`), side by side in one pytest-benchmark run.

A step = forward (logits B x T x V), `entropy_pg_loss` (clip-higher, dual clip, k3 KL, entropy bonus,
token-mean), backward, AdamW update. Sizes: CPU vocab 32000, hidden 256, 2 layers, batch 8 x 256 tokens;
CUDA vocab 151936, hidden 512, 2 layers, batch 8 x 1024 tokens; quick (EXPRL_BENCH_QUICK=1) vocab 16000,
hidden 128, batch 4 x 128 tokens.

    pytest benchmarks/bench_train_step.py --benchmark-enable                      # full size for this machine
    EXPRL_BENCH_QUICK=1 pytest benchmarks/bench_train_step.py --benchmark-enable  # small shapes, a smoke run

Time: pytest-benchmark's median over the timed steps after one warm-up step, in this process (the loss's
float() synchronises the device). Peak memory: each backend in its own child process after a warm-up
step (`common.peak_memory_mib`). The table goes to bench_train_step_<device>[_quick]_<date>.json and .md
(see common.py); the fused/eager ratios are printed.
"""

from __future__ import annotations

import math

import pytest
import torch
from common import CUDA, DEVICE, QUICK, Report, fmt, measure, peak_memory_mib, ratio

if QUICK:
    SIZE = {"vocab": 16000, "hidden": 128, "layers": 2, "batch": 4, "seq": 128, "steps": 3}
elif CUDA:
    SIZE = {"vocab": 151936, "hidden": 512, "layers": 2, "batch": 8, "seq": 1024, "steps": 10}
else:
    SIZE = {"vocab": 32000, "hidden": 256, "layers": 2, "batch": 8, "seq": 256, "steps": 5}
BACKENDS = ["auto", "eager"]  # auto = the fused path (triton on CUDA, chunked torch on CPU)
LABELS = {"auto": "fused (auto)", "eager": "eager reference"}

REPORT = Report("bench_train_step", "One training step, fused vs eager loss", size=SIZE,
                timing="median over the timed steps after one warm-up step")  # fmt: skip


def make_step(backend: str, size: dict):
    """A seeded model, optimizer and batch; returns `step() -> loss` (one full training step).

    The model and the data depend only on the seeds, so both backends train the same model on the same
    batch and their losses are comparable step by step.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    from exprl.kernels import entropy_pg_loss

    torch.manual_seed(0)
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
    model = LlamaForCausalLM(cfg).to(DEVICE)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    b, t = size["batch"], size["seq"]
    g = torch.Generator().manual_seed(1)
    input_ids = torch.randint(0, size["vocab"], (b, t), generator=g).to(DEVICE)
    targets = torch.roll(input_ids, -1, 1)
    mask = torch.ones(b, t, dtype=torch.bool, device=DEVICE)
    mask[:, : t // 4] = False  # the prompt part
    targets[~mask] = -100
    advantages = torch.randn(b, generator=g).to(DEVICE)
    old = (-torch.rand(b, t, generator=g) * 5).to(DEVICE)
    ref = old + 0.01 * torch.randn(b, t, generator=g).to(DEVICE)

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


def prepare(backend: str, size: dict):
    """For the peak-memory child: the step after a warm-up step (optimizer state, allocator, lazy inits)."""
    step = make_step(backend, size)
    step()
    return step


@pytest.mark.benchmark(group="train-step")
@pytest.mark.parametrize("backend", BACKENDS)
def test_bench_train_step(benchmark, backend):
    step = make_step(backend, SIZE)
    step()  # warm-up: Triton compilation, optimizer state, allocator
    losses: list[float] = []
    timing = measure(benchmark, lambda: losses.append(step()), rounds=SIZE["steps"], warmup_rounds=0)
    assert all(math.isfinite(x) for x in losses), losses
    REPORT.add(
        backend=backend,
        median_s=timing.median_s,
        min_s=timing.min_s,
        steps_timed=timing.rounds,
        peak_step_mib=peak_memory_mib(__file__, backend=backend, size=SIZE),
        losses=losses,
    )


def summary() -> dict:
    """The fused/eager ratios (empty until both backends ran) and the largest loss difference."""
    rows = {r["backend"]: r for r in REPORT.rows}
    fused, eager = rows.get("auto"), rows.get("eager")
    if not (fused and eager):
        return {}
    return {
        "time_ratio_fused_over_eager": fused["median_s"] / eager["median_s"],
        "memory_ratio_fused_over_eager": ratio(fused["peak_step_mib"], eager["peak_step_mib"]),
        "max_abs_loss_difference": max(
            abs(a - b) for a, b in zip(fused["losses"], eager["losses"], strict=True)
        ),
    }


COLUMNS = {
    "loss backend": lambda r: LABELS[r["backend"]],
    "median step (s)": lambda r: fmt(r["median_s"], ".3f"),
    "min step (s)": lambda r: fmt(r["min_s"], ".3f"),
    "peak step memory (MiB)": lambda r: fmt(r["peak_step_mib"], ".1f"),
}


@pytest.fixture(scope="module", autouse=True)
def write_table():
    yield
    ratios = summary()
    notes = []
    if ratios:
        time_ratio = fmt(ratios["time_ratio_fused_over_eager"], ".2f", "x")
        line = f"time fused/eager: {time_ratio}, memory fused/eager: "
        line += fmt(ratios["memory_ratio_fused_over_eager"], ".2f", "x")
        notes = [
            f"{line}; largest loss difference over the timed steps: {ratios['max_abs_loss_difference']:.2e}"
        ]
        print(f"\ntrain step {line}")
    REPORT.write(COLUMNS, summary=ratios, notes=notes)
