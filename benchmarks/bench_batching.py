"""Rollout batching benchmark: exprl.batching (compiled `exprl._C` ops) against the straightforward
PyTorch code that builds the same tensors, side by side in one pytest-benchmark run.

CPU: B*G = 1024 sequences, prompts 64-512 tokens, responses 1-4096 tokens (long-tailed); the full
rollout batch (input_ids, attention_mask, position_ids, response_mask, target_ids) in the padded and in
the packed layout. Targets: padded >= 4x, packed >= 10x faster than the straightforward version.
CUDA: a padded (1024, 4096) generation output -> packed training layout, against the eager-PyTorch
composition (the reference ops); target >= 3x.

    pytest benchmarks/bench_batching.py --benchmark-enable        # or `exprl bench batching [--quick]`

EXPRL_BENCH_QUICK=1 picks the small CI size. Times are pytest-benchmark's medians and minima; the ratios
are printed and the table goes to bench_batching_<device>[_quick]_<date>.json and .md (see common.py).
"""

import os

import pytest
import torch
from common import QUICK, Report, fmt, measure, ratio
from torch.nn.utils.rnn import pad_sequence

import exprl.batching as batching

BATCH = 64 if QUICK else 1024
MAX_RESPONSE = 512 if QUICK else 4096
ROUNDS = 2 if QUICK else 11  # medians over 11 rounds: the shared box is noisy
PAD_ID = 0
EOS_ID = 2
TARGETS = {"cpu-padded": 4.0, "cpu-packed": 10.0, "cuda-generation-packed": 3.0}
BASELINES = ("straightforward", "eager-torch")

# torch's CPU allocator puts large tensors on huge pages when THP_MEM_ALLOC_ENABLE is 1 (baseline included)
REPORT = Report("bench_batching", "Rollout batching benchmark", batch=BATCH, max_response=MAX_RESPONSE,
                THP_MEM_ALLOC_ENABLE=os.environ.get("THP_MEM_ALLOC_ENABLE", "unset"))  # fmt: skip


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


def record(group: str, name: str, timing) -> None:
    """One row: the group's case, the implementation, its median and fastest round (on a shared machine
    the median carries other processes' load, the minimum less)."""
    REPORT.add(group=group, impl=name, median_s=timing.median_s, min_s=timing.min_s, rounds=timing.rounds)


@pytest.fixture(scope="module", autouse=True)
def write_table():
    """After the module's benchmarks: the ratios on stdout, the table as JSON and Markdown."""
    yield
    rows = summary()
    for group, row in rows.items():
        print(f"\n{group}: speedup {fmt(row['speedup'], '.1f', 'x')} (target >= {row['target']:.0f}x)")
    REPORT.header["backend_cpu"] = batching.backend("cpu")
    REPORT.write(COLUMNS, rows=[{"group": group, **row} for group, row in rows.items()], summary=rows)


@pytest.fixture(scope="module")
def cpu_rollouts():
    return rollout_lists(BATCH)


def bench_build_rollout_batch(benchmark, rollouts, backend: str, layout: str) -> batching.TrainingBatch:
    """Time exprl.batching.build_rollout_batch on `backend` ("ext" or "torch") and record it."""
    if backend == "ext" and batching.extension_error() is not None:
        pytest.skip(batching.extension_error())
    prompts, responses = rollouts
    with batching.use_backend(backend):
        timing = measure(
            benchmark, batching.build_rollout_batch, prompts, responses, PAD_ID, layout, rounds=ROUNDS
        )
    record(f"cpu-{layout}", f"exprl-{backend}", timing)
    return timing.result


def batch_tensors(batch: batching.TrainingBatch) -> tuple[torch.Tensor, ...]:
    return (batch.input_ids, batch.attention_mask, batch.position_ids, batch.response_mask, batch.target_ids)


@pytest.mark.benchmark(group="cpu-padded")
def test_cpu_padded_straightforward(benchmark, cpu_rollouts):
    timing = measure(benchmark, straightforward_padded, *cpu_rollouts, PAD_ID, rounds=ROUNDS)
    record("cpu-padded", "straightforward", timing)


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
    timing = measure(benchmark, fill_outputs, output_buffers((BATCH, width)), rounds=ROUNDS)
    record("cpu-padded", "fill-warm", timing)


@pytest.mark.benchmark(group="cpu-packed")
def test_cpu_packed_fill_warm_outputs(benchmark, cpu_rollouts):
    total = sum(len(p) + len(r) for p, r in zip(*cpu_rollouts, strict=True))
    timing = measure(benchmark, fill_outputs, output_buffers((total,)), rounds=ROUNDS)
    record("cpu-packed", "fill-warm", timing)


@pytest.mark.benchmark(group="cpu-padded")
def test_cpu_padded_alloc_and_fill_outputs(benchmark, cpu_rollouts):
    width = max(len(p) + len(r) for p, r in zip(*cpu_rollouts, strict=True))
    timing = measure(benchmark, alloc_and_fill_outputs, (BATCH, width), rounds=ROUNDS)
    record("cpu-padded", "alloc-fill", timing)


@pytest.mark.benchmark(group="cpu-packed")
def test_cpu_packed_alloc_and_fill_outputs(benchmark, cpu_rollouts):
    total = sum(len(p) + len(r) for p, r in zip(*cpu_rollouts, strict=True))
    timing = measure(benchmark, alloc_and_fill_outputs, (total,), rounds=ROUNDS)
    record("cpu-packed", "alloc-fill", timing)


@pytest.mark.benchmark(group="cpu-packed")
def test_cpu_packed_straightforward(benchmark, cpu_rollouts):
    timing = measure(benchmark, straightforward_packed, *cpu_rollouts, rounds=ROUNDS)
    record("cpu-packed", "straightforward", timing)


@pytest.mark.benchmark(group="cpu-packed")
@pytest.mark.parametrize("backend", ["ext", "torch"])
def test_cpu_packed_exprl(benchmark, cpu_rollouts, backend):
    batch = bench_build_rollout_batch(benchmark, cpu_rollouts, backend, "packed")
    expected = straightforward_packed(*cpu_rollouts)
    assert all(torch.equal(a, b) for a, b in zip(batch_tensors(batch), expected[:5], strict=True))
    assert torch.equal(batch.cu_seqlens, expected[5])


def _cuda_call(backend: str, sequences, prompt_lengths, prompt_width):
    with batching.use_backend(backend):
        return batching.batch_from_generation(
            sequences, prompt_lengths, prompt_width, EOS_ID, PAD_ID, "packed"
        )


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
    timing = measure(benchmark, _cuda_call, *args, rounds=ROUNDS * 4, warmup_rounds=2)
    record("cuda-generation-packed", "eager-torch" if backend == "torch" else "exprl-ext", timing)
    batch = timing.result
    expected = _cuda_call("torch", *args[1:])
    for name in batching.TrainingBatch.tensor_fields:
        assert torch.equal(getattr(batch, name), getattr(expected, name)), name


def summary() -> dict:
    """Per group: each implementation's median and minimum, the baseline's over exprl-ext's (speedup), and
    the target of the issue."""
    rows = {}
    for group in dict.fromkeys(r["group"] for r in REPORT.rows):
        medians = {r["impl"]: r["median_s"] for r in REPORT.rows if r["group"] == group}
        minima = {r["impl"]: r["min_s"] for r in REPORT.rows if r["group"] == group}
        baseline = next((name for name in BASELINES if name in medians), None)
        rows[group] = {
            "median_s": medians,
            "min_s": minima,
            "speedup": ratio(medians.get(baseline), medians.get("exprl-ext")),
            "speedup_of_minima": ratio(minima.get(baseline), minima.get("exprl-ext")),
            "target": TARGETS[group],
        }
    return rows


def _ms(row: dict, *names: str) -> str:
    """The median of the first of `names` the group has, in ms."""
    value = next((row["median_s"][name] for name in names if name in row["median_s"]), None)
    return fmt(None if value is None else 1e3 * value, ".1f")


COLUMNS = {
    "case": lambda r: r["group"],
    "baseline median (ms)": lambda r: _ms(r, *BASELINES),
    "exprl ext median (ms)": lambda r: _ms(r, "exprl-ext"),
    "exprl torch fallback (ms)": lambda r: _ms(r, "exprl-torch"),
    "alloc+fill outputs only (ms)": lambda r: _ms(r, "alloc-fill"),
    "fill preallocated outputs (ms)": lambda r: _ms(r, "fill-warm"),
    "speedup": lambda r: fmt(r["speedup"], ".1f", "x"),
    "speedup of minima": lambda r: fmt(r["speedup_of_minima"], ".1f", "x"),
    "target": lambda r: f">= {r['target']:.0f}x",
}
