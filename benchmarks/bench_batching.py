"""Rollout batching benchmark: exprl.batching (compiled `exprl._C` ops) against the straightforward
PyTorch code that builds the same tensors, side by side in one pytest-benchmark run.

CPU: B*G = 1024 sequences, prompts 64-512 tokens, responses 1-4096 tokens (long-tailed); the full
rollout batch (input_ids, attention_mask, position_ids, response_mask, target_ids) in the padded and in
the packed layout. Targets: padded >= 4x, packed >= 10x faster than the straightforward version.
CUDA: a padded (1024, 4096) generation output -> packed training layout, against the eager-PyTorch
composition (the reference ops); target >= 3x.

    python benchmarks/bench_batching.py [--quick] [--out benchmarks/results]

or `pytest benchmarks/bench_batching.py --benchmark-enable` (EXPRL_BENCH_QUICK=1 for the small CI size,
EXPRL_BENCH_OUT for the folder) prints the ratios and writes bench_batching_<date>_<device>.json and .md
to the output folder (default benchmarks/results/, or the temp dir in quick mode).
"""

import argparse
import datetime
import json
import os
import platform
import socket
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from torch.nn.utils.rnn import pad_sequence

import exprl.batching as batching

QUICK = os.environ.get("EXPRL_BENCH_QUICK") == "1"
BATCH = 64 if QUICK else 1024
MAX_RESPONSE = 512 if QUICK else 4096
ROUNDS = 2 if QUICK else 11  # medians over 11 rounds: the shared box is noisy
PAD_ID = 0
EOS_ID = 2
# quick (smoke) runs write to the temp dir so that CI leaves the checkout clean
_DEFAULT_OUT = Path(tempfile.gettempdir()) / "exprl_bench" if QUICK else Path(__file__).parent / "results"
OUT_DIR = Path(os.environ.get("EXPRL_BENCH_OUT", _DEFAULT_OUT))
TARGETS = {"cpu-padded": 4.0, "cpu-packed": 10.0, "cuda-generation-packed": 3.0}

RESULTS: dict[str, dict[str, float]] = {}
# Fastest round per case: on a shared machine the median carries other processes' load, the minimum less.
MINIMA: dict[str, dict[str, float]] = {}


def rollout_lists(batch: int, seed: int = 0) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Prompts of 64-512 tokens, responses of 1-MAX_RESPONSE tokens, most short and a long tail."""
    generator = torch.Generator().manual_seed(seed)
    prompt_lengths = torch.randint(64, 513, (batch,), generator=generator)
    response_lengths = 1 + (torch.rand(batch, generator=generator) ** 3 * (MAX_RESPONSE - 1)).long()
    prompts = [torch.randint(3, 32_000, (int(n),), generator=generator) for n in prompt_lengths]
    responses = [torch.randint(3, 32_000, (int(n),), generator=generator) for n in response_lengths]
    return prompts, responses


def straightforward_padded(prompts, responses, pad_id):
    """The padded rollout batch as one writes it without the extension."""
    seqs = [torch.cat([p, r]) for p, r in zip(prompts, responses, strict=True)]
    input_ids = pad_sequence(seqs, batch_first=True, padding_value=pad_id)
    attention_mask = pad_sequence([torch.ones_like(s) for s in seqs], batch_first=True, padding_value=0)
    position_ids = torch.zeros_like(input_ids)
    response_mask = torch.zeros(input_ids.shape, dtype=torch.bool)
    target_ids = torch.full_like(input_ids, -100)
    for i, (p, r) in enumerate(zip(prompts, responses, strict=True)):
        n = len(p) + len(r)
        position_ids[i, :n] = torch.arange(n)
        first = max(len(p) - 1, 0)
        targets = r if len(p) > 0 else r[1:]
        target_ids[i, first : first + len(targets)] = targets
        response_mask[i, first : first + len(targets)] = True
    return input_ids, attention_mask, position_ids, response_mask, target_ids


def straightforward_packed(prompts, responses):
    """The packed rollout batch as one writes it without the extension."""
    seqs = [torch.cat([p, r]) for p, r in zip(prompts, responses, strict=True)]
    input_ids = torch.cat(seqs)
    lengths = torch.tensor([len(s) for s in seqs])
    cu_seqlens = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)]).int()
    position_ids = torch.cat([torch.arange(len(s)) for s in seqs])
    attention_mask = torch.ones_like(input_ids)
    target_ids = torch.cat(
        [
            torch.cat(
                [torch.full((len(p) - 1,), -100), r, torch.tensor([-100])]
            )  # prompts are never empty here
            for p, r in zip(prompts, responses, strict=True)
        ]
    )
    response_mask = target_ids != -100
    return input_ids, attention_mask, position_ids, response_mask, target_ids, cu_seqlens


def generation_output(batch: int, width: int, prompt_width: int, device: str, seed: int = 0):
    """A `generate` output: left-padded prompts in [0, prompt_width), responses ending in EOS then pad."""
    generator = torch.Generator().manual_seed(seed)
    sequences = torch.randint(3, 32_000, (batch, width), generator=generator)
    prompt_lengths = torch.randint(64, prompt_width + 1, (batch,), generator=generator)
    responses = width - prompt_width
    response_lengths = 1 + (torch.rand(batch, generator=generator) ** 3 * (responses - 1)).long()
    response_lengths[torch.rand(batch, generator=generator) < 0.05] = responses  # hit the length limit
    columns = torch.arange(width)
    sequences[columns < (prompt_width - prompt_lengths)[:, None]] = PAD_ID
    stops = response_lengths < responses  # the others are truncated (no EOS)
    eos_column = prompt_width + response_lengths - 1
    sequences[stops, eos_column[stops]] = EOS_ID
    sequences[columns > eos_column[:, None]] = PAD_ID
    return sequences.to(device), prompt_lengths.to(device)


def record(group: str, name: str, benchmark) -> None:
    if benchmark.stats is not None:
        RESULTS.setdefault(group, {})[name] = benchmark.stats.stats.median
        MINIMA.setdefault(group, {})[name] = benchmark.stats.stats.min


@pytest.fixture(scope="module", autouse=True)
def write_table():
    """After the module's benchmarks: the ratios on stdout, the table as JSON and Markdown in OUT_DIR."""
    yield
    if not RESULTS:
        return
    base = write_results(OUT_DIR, QUICK)
    for group, row in summary().items():
        speedup = f"{row['speedup']:.1f}x" if row["speedup"] else "n/a"
        print(f"\n{group}: speedup {speedup} (target >= {row['target']:.0f}x)")
    print(f"wrote {base}.json and {base}.md")


@pytest.fixture(scope="module")
def cpu_rollouts():
    return rollout_lists(BATCH)


def bench_build_rollout_batch(benchmark, rollouts, backend: str, layout: str) -> batching.TrainingBatch:
    """Time exprl.batching.build_rollout_batch on `backend` ("ext" or "torch") and record it."""
    if backend == "ext" and batching.extension_error() is not None:
        pytest.skip(batching.extension_error())
    prompts, responses = rollouts
    with batching.use_backend(backend):
        batch = benchmark.pedantic(
            batching.build_rollout_batch,
            args=(prompts, responses, PAD_ID, layout),
            rounds=ROUNDS,
            warmup_rounds=1,
        )
    record(f"cpu-{layout}", f"exprl-{backend}", benchmark)
    return batch


def batch_tensors(batch: batching.TrainingBatch) -> tuple[torch.Tensor, ...]:
    return (batch.input_ids, batch.attention_mask, batch.position_ids, batch.response_mask, batch.target_ids)


@pytest.mark.benchmark(group="cpu-padded")
def test_cpu_padded_straightforward(benchmark, cpu_rollouts):
    benchmark.pedantic(straightforward_padded, args=(*cpu_rollouts, PAD_ID), rounds=ROUNDS, warmup_rounds=1)
    record("cpu-padded", "straightforward", benchmark)


@pytest.mark.benchmark(group="cpu-padded")
@pytest.mark.parametrize("backend", ["ext", "torch"])
def test_cpu_padded_exprl(benchmark, cpu_rollouts, backend):
    batch = bench_build_rollout_batch(benchmark, cpu_rollouts, backend, "padded")
    expected = straightforward_padded(*cpu_rollouts, PAD_ID)
    assert all(torch.equal(a, b) for a, b in zip(batch_tensors(batch), expected, strict=True))


def alloc_and_fill_outputs(shape: tuple[int, ...]) -> list[torch.Tensor]:
    """Context, not a bound: allocating the five output tensors and filling them with torch ops."""
    return [torch.empty(shape, dtype=torch.long).fill_(1) for _ in range(4)] + [
        torch.ones(shape, dtype=torch.bool)
    ]


def output_buffers(shape: tuple[int, ...]) -> list[torch.Tensor]:
    return [torch.ones(shape, dtype=torch.long) for _ in range(4)] + [torch.ones(shape, dtype=torch.bool)]


def fill_outputs(buffers: list[torch.Tensor]) -> list[torch.Tensor]:
    """Context, near a floor: writing every element of five already-mapped output tensors once."""
    return [buffer.fill_(1) for buffer in buffers]


@pytest.mark.benchmark(group="cpu-padded")
def test_cpu_padded_fill_warm_outputs(benchmark, cpu_rollouts):
    width = max(len(p) + len(r) for p, r in zip(*cpu_rollouts, strict=True))
    benchmark.pedantic(fill_outputs, args=(output_buffers((BATCH, width)),), rounds=ROUNDS, warmup_rounds=1)
    record("cpu-padded", "fill-warm", benchmark)


@pytest.mark.benchmark(group="cpu-packed")
def test_cpu_packed_fill_warm_outputs(benchmark, cpu_rollouts):
    total = sum(len(p) + len(r) for p, r in zip(*cpu_rollouts, strict=True))
    benchmark.pedantic(fill_outputs, args=(output_buffers((total,)),), rounds=ROUNDS, warmup_rounds=1)
    record("cpu-packed", "fill-warm", benchmark)


@pytest.mark.benchmark(group="cpu-padded")
def test_cpu_padded_alloc_and_fill_outputs(benchmark, cpu_rollouts):
    width = max(len(p) + len(r) for p, r in zip(*cpu_rollouts, strict=True))
    benchmark.pedantic(alloc_and_fill_outputs, args=((BATCH, width),), rounds=ROUNDS, warmup_rounds=1)
    record("cpu-padded", "alloc-fill", benchmark)


@pytest.mark.benchmark(group="cpu-packed")
def test_cpu_packed_alloc_and_fill_outputs(benchmark, cpu_rollouts):
    total = sum(len(p) + len(r) for p, r in zip(*cpu_rollouts, strict=True))
    benchmark.pedantic(alloc_and_fill_outputs, args=((total,),), rounds=ROUNDS, warmup_rounds=1)
    record("cpu-packed", "alloc-fill", benchmark)


@pytest.mark.benchmark(group="cpu-packed")
def test_cpu_packed_straightforward(benchmark, cpu_rollouts):
    benchmark.pedantic(straightforward_packed, args=cpu_rollouts, rounds=ROUNDS, warmup_rounds=1)
    record("cpu-packed", "straightforward", benchmark)


@pytest.mark.benchmark(group="cpu-packed")
@pytest.mark.parametrize("backend", ["ext", "torch"])
def test_cpu_packed_exprl(benchmark, cpu_rollouts, backend):
    batch = bench_build_rollout_batch(benchmark, cpu_rollouts, backend, "packed")
    expected = straightforward_packed(*cpu_rollouts)
    assert all(torch.equal(a, b) for a, b in zip(batch_tensors(batch), expected[:5], strict=True))
    assert torch.equal(batch.cu_seqlens, expected[5])


def _cuda_call(backend: str, sequences, prompt_lengths, prompt_width):
    with batching.use_backend(backend):
        batch = batching.batch_from_generation(
            sequences, prompt_lengths, prompt_width, EOS_ID, PAD_ID, "packed"
        )
    torch.cuda.synchronize()
    return batch


@pytest.mark.cuda
@pytest.mark.benchmark(group="cuda-generation-packed")
@pytest.mark.parametrize("backend", ["torch", "ext"])
def test_cuda_generation_to_packed(benchmark, backend):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    if backend == "ext" and not torch._C._dispatch_has_kernel_for_dispatch_key(
        "exprl::rollout_batch", "CUDA"
    ):
        pytest.skip("exprl._C was built without CUDA")
    batch_size, width, prompt_width = (64, 1024, 256) if QUICK else (1024, 4096, 512)
    sequences, prompt_lengths = generation_output(batch_size, width, prompt_width, "cuda")
    args = (backend, sequences, prompt_lengths, prompt_width)
    batch = benchmark.pedantic(_cuda_call, args=args, rounds=ROUNDS * 4, warmup_rounds=2)
    record("cuda-generation-packed", "eager-torch" if backend == "torch" else "exprl-ext", benchmark)
    expected = _cuda_call("torch", *args[1:])
    for name in batching.TrainingBatch.tensor_fields:
        assert torch.equal(getattr(batch, name), getattr(expected, name)), name


def summary() -> dict:
    """Ratios of each group's baseline median time to exprl's, with the target of the issue."""
    rows = {}
    for group, times in RESULTS.items():
        baseline = times.get("straightforward", times.get("eager-torch"))
        fast = times.get("exprl-ext")
        minima = MINIMA.get(group, {})
        baseline_min = minima.get("straightforward", minima.get("eager-torch"))
        fast_min = minima.get("exprl-ext")
        rows[group] = {
            "median_s": times,
            "min_s": minima,
            "speedup": baseline / fast if baseline and fast else None,
            "speedup_of_minima": baseline_min / fast_min if baseline_min and fast_min else None,
            "target": TARGETS[group],
        }
    return rows


def machine() -> str:
    gpu = f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return (
        f"{socket.gethostname()} ({platform.processor() or platform.machine()}, {os.cpu_count()} CPUs{gpu})"
    )


def write_results(out_dir: Path, quick: bool) -> Path:
    stamp = datetime.datetime.now(datetime.UTC)
    host = "cuda" if torch.cuda.is_available() else "cpu"
    base = out_dir / f"bench_batching_{stamp:%Y-%m-%d}_{host}{'_quick' if quick else ''}"
    rows = summary()
    header = {
        "date": stamp.isoformat(timespec="seconds"),
        "machine": machine(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "backend_cpu": batching.backend("cpu"),
        # torch's CPU allocator puts large tensors on huge pages when this is 1 (baseline included)
        "THP_MEM_ALLOC_ENABLE": os.environ.get("THP_MEM_ALLOC_ENABLE", "unset"),
        "batch": BATCH,
        "max_response": MAX_RESPONSE,
        "quick": quick,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    base.with_suffix(".json").write_text(json.dumps({**header, "results": rows}, indent=2) + "\n")
    lines = [
        "# Rollout batching benchmark",
        "",
        *(f"- {key}: {value}" for key, value in header.items()),
        "",
        "| case | baseline median (ms) | exprl ext median (ms) | exprl torch fallback (ms)"
        " | alloc+fill outputs only (ms) | fill preallocated outputs (ms) | speedup"
        " | speedup of minima | target |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for group, row in rows.items():
        times = row["median_s"]
        baseline = times.get("straightforward", times.get("eager-torch"))

        def ms(value):
            return f"{value * 1e3:.1f}" if value is not None else "-"

        speedup = f"{row['speedup']:.1f}x" if row["speedup"] else "-"
        speedup_min = f"{row['speedup_of_minima']:.1f}x" if row["speedup_of_minima"] else "-"
        fallback = ms(times.get("exprl-torch")) if "exprl-torch" in times else "-"
        lines.append(
            f"| {group} | {ms(baseline)} | {ms(times.get('exprl-ext'))} | {fallback}"
            f" | {ms(times.get('alloc-fill'))} | {ms(times.get('fill-warm'))} | {speedup} | {speedup_min}"
            f" | >= {row['target']:.0f}x |"
        )
    base.with_suffix(".md").write_text("\n".join(lines) + "\n")
    return base


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small batch and few rounds (CI smoke run)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: EXPRL_BENCH_OUT)")
    parser.add_argument("--cuda-only", action="store_true", help="only the CUDA case")
    args = parser.parse_args(argv)
    if args.quick:
        os.environ["EXPRL_BENCH_QUICK"] = "1"
    if args.out is not None:
        os.environ["EXPRL_BENCH_OUT"] = str(args.out)
    pytest_args = [__file__, "-q", "-s", "-p", "no:cacheprovider", "--benchmark-enable"]
    if args.cuda_only:
        pytest_args += ["-k", "cuda"]
    return int(pytest.main(pytest_args))


if __name__ == "__main__":
    sys.exit(main())
