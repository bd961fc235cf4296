"""One policy-gradient training step, side by side in one pytest-benchmark run:
- on a small Llama, the fused loss (`backend="auto"`) against the eager reference loss (`backend="eager"`);
- on a Qwen-shaped model (vocab 151936, tied input/output embeddings), the trainer's loss path with
  `algo.fused_linear` on (`exprl.train.loop.policy_loss`: hidden states of the response positions and the
  lm_head into `linear_entropy_pg_loss`, no logits) against off (logits of every position into
  `entropy_pg_loss`), both with the fused backend.

A step = forward, the loss (clip-higher, dual clip, k3 KL, entropy bonus, token-mean), backward, AdamW
update. Llama sizes: CPU vocab 32000, hidden 256, 2 layers, batch 8 x 256 tokens; CUDA vocab 151936,
hidden 512, 2 layers, batch 8 x 1024 tokens; quick (EXPRL_BENCH_QUICK=1) vocab 16000, hidden 128, batch
4 x 128 tokens. Qwen-shaped sizes (a quarter of each sequence is prompt): CPU hidden 128, 2 layers, batch
4 x 256; CUDA hidden 1024, 4 layers, batch 8 x 1024 (bf16), where the logits outweigh the layers; quick
hidden 64, 1 layer, batch 2 x 64.

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

if QUICK:
    QWEN = {"vocab": 151936, "hidden": 64, "layers": 1, "batch": 2, "seq": 64, "steps": 2}
elif CUDA:
    QWEN = {"vocab": 151936, "hidden": 1024, "layers": 4, "batch": 8, "seq": 1024, "steps": 10}
else:
    QWEN = {"vocab": 151936, "hidden": 128, "layers": 2, "batch": 4, "seq": 256, "steps": 3}
QWEN_LABELS = {True: "fused_linear on", False: "fused_linear off"}

TITLE = "One training step, fused vs eager loss; fused_linear on vs off"
REPORT = Report("bench_train_step", TITLE, size=SIZE, qwen_size=QWEN,
                timing="median over the timed steps after one warm-up step")  # fmt: skip


def model_shape(size: dict) -> dict:
    """The Hugging Face config fields that `size` fixes (4 attention heads, MLP 4x the hidden size)."""
    return dict(
        vocab_size=size["vocab"],
        hidden_size=size["hidden"],
        intermediate_size=4 * size["hidden"],
        num_hidden_layers=size["layers"],
        num_attention_heads=4,
        max_position_embeddings=size["seq"],
    )


def make_step(backend: str, size: dict):
    """A seeded model, optimizer and batch; returns `step() -> loss` (one full training step).

    The model and the data depend only on the seeds, so both backends train the same model on the same
    batch and their losses are comparable step by step.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    from exprl.kernels import entropy_pg_loss

    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(**model_shape(size), num_key_value_heads=4, tie_word_embeddings=False)
    )
    model = model.to(DEVICE)
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


def make_qwen_step(fused_linear: bool, size: dict):
    """A seeded Qwen-shaped model (tied embeddings), optimizer and micro-batch; returns `step() -> loss`,
    one training step through the trainer's own loss path (`policy_loss`, `policy_logprobs`)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from exprl import batching
    from exprl.train.engine import fused_linear_head
    from exprl.train.loop import MicroBatch, policy_logprobs, policy_loss

    torch.manual_seed(0)
    model = Qwen2ForCausalLM(
        Qwen2Config(**model_shape(size), num_key_value_heads=2, tie_word_embeddings=True)
    )
    model = model.to(device=DEVICE, dtype=torch.bfloat16 if CUDA else torch.float32)
    assert fused_linear_head(model, fused_linear) == fused_linear
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    b, t = size["batch"], size["seq"]
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, size["vocab"], (t // 4,), generator=g) for _ in range(b)]
    responses = [torch.randint(0, size["vocab"], (t - t // 4,), generator=g) for _ in range(b)]
    batch = batching.build_rollout_batch(prompts, responses, 0, layout="padded").to(DEVICE)
    advantages = torch.randn(b, 1, generator=g).expand(batch.response_mask.shape).contiguous()
    mb = MicroBatch(batch, advantages.to(DEVICE), batch.response_mask)
    with torch.no_grad():  # the reference and old-policy passes of the trainer, once
        mb.ref_logprobs = mb.old_logprobs = policy_logprobs(model, mb, 1.0, fused_linear)
    options = dict(clip_low=0.2, clip_high=0.28, dual_clip=3.0, kl_coef=1e-3, entropy_coef=1e-3)

    def step() -> float:
        out = policy_loss(model, mb, fused_linear, **options)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(out.loss.detach())  # a host sync, also on CUDA

    return step


def prepare(backend: str, size: dict):
    """For the peak-memory child: the step after a warm-up step (optimizer state, allocator, lazy inits)."""
    step = make_step(backend, size)
    step()
    return step


def prepare_qwen(fused_linear: bool, size: dict):
    """`prepare` for the Qwen-shaped step."""
    step = make_qwen_step(fused_linear, size)
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


@pytest.mark.benchmark(group="train-step-qwen")
@pytest.mark.parametrize("fused_linear", [True, False], ids=["fused_linear-on", "fused_linear-off"])
def test_bench_qwen_shaped_step(benchmark, fused_linear):
    step = make_qwen_step(fused_linear, QWEN)
    step()  # warm-up
    losses: list[float] = []
    timing = measure(benchmark, lambda: losses.append(step()), rounds=QWEN["steps"], warmup_rounds=0)
    assert all(math.isfinite(x) for x in losses), losses
    REPORT.add(
        model="qwen-shaped",
        backend=QWEN_LABELS[fused_linear],
        median_s=timing.median_s,
        min_s=timing.min_s,
        steps_timed=timing.rounds,
        peak_step_mib=peak_memory_mib(__file__, "prepare_qwen", fused_linear=fused_linear, size=QWEN),
        losses=losses,
    )


def summary() -> dict:
    """The fused/eager and fused_linear on/off ratios (each once both of its rows ran) and the largest
    loss difference of each pair."""
    rows = {r["backend"]: r for r in REPORT.rows}
    out = {}
    for name, (new, old) in {
        "fused_over_eager": ("auto", "eager"),
        "fused_linear_on_over_off": (QWEN_LABELS[True], QWEN_LABELS[False]),
    }.items():
        if not (rows.get(new) and rows.get(old)):
            continue
        new, old = rows[new], rows[old]
        out[f"time_ratio_{name}"] = new["median_s"] / old["median_s"]
        out[f"memory_ratio_{name}"] = ratio(new["peak_step_mib"], old["peak_step_mib"])
        pairs = zip(new["losses"], old["losses"], strict=True)
        out[f"max_abs_loss_difference_{name}"] = max(abs(a - b) for a, b in pairs)
    return out


COLUMNS = {
    "model": lambda r: r.get("model", "llama"),
    "loss path": lambda r: LABELS.get(r["backend"], r["backend"]),
    "median step (s)": lambda r: fmt(r["median_s"], ".3f"),
    "min step (s)": lambda r: fmt(r["min_s"], ".3f"),
    "peak step memory (MiB)": lambda r: fmt(r["peak_step_mib"], ".1f"),
}


@pytest.fixture(scope="module", autouse=True)
def write_table():
    yield
    ratios = summary()
    notes = []
    for name, label in (
        ("fused_over_eager", "fused/eager"),
        ("fused_linear_on_over_off", "fused_linear on/off"),
    ):
        if f"time_ratio_{name}" not in ratios:
            continue
        line = f"time {label}: {fmt(ratios[f'time_ratio_{name}'], '.2f', 'x')}, memory {label}: "
        line += fmt(ratios[f"memory_ratio_{name}"], ".2f", "x")
        difference = ratios[f"max_abs_loss_difference_{name}"]
        notes.append(f"{line}; largest loss difference over the timed steps: {difference:.2e}")
        print(f"\ntrain step {line}")
    REPORT.write(COLUMNS, summary=ratios, notes=notes)
