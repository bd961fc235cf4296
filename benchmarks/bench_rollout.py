"""Rollout benchmark: one training step's sampling (P prompts x G samples, up to R new tokens), the path
exprl used before issue 14 against its sampler, side by side in one pytest-benchmark run.

Paths (rows of the table):
* `per-prompt-generate`: exprl's path before issue 14, kept here only for this comparison: one
  `model.generate` call per prompt for its G rows, seeded per prompt, cut at the first eos.
* `hf-generate-one-call`: one plain `model.generate` for all P x G rows (left-padded); what a user gets
  without exprl, not seeded per row. The GPU target compares exprl with it.
* `hf-generate-batch`: transformers' continuous batching (`generate_batch`, paged attention), its paged
  cache sized to the step (pages of 128 tokens, one per row and layer); left to size itself from the
  free memory, a call took 10-50 s on the 2-core CPU box.
* `exprl`: `exprl.models.generation.sample_tokens`, the trainer's sampler: one batched decode, the prefill
  once per prompt, finished rows compacted out, each row seeded from its own stream.
* `exprl-compiled` (CUDA only): the same with `compile_decoding=True` (static KV cache, CUDA graphs).

Models: the tiny model shipped with exprl on the default run's step (8 prompts x 8 samples, 64 new
tokens, the training prompts) and a Qwen2.5-shaped model with random weights built from a config
(V=151936; CPU: hidden 128, 2 layers, 4 prompts x 8 samples, 32 new tokens; CUDA: the 0.5B shape in
bf16, 64 rows x 128 new tokens), prompts of 16-48 random tokens, and the first 1% of the vocabulary
declared eos so that rows end at different steps.

Reported: the median time per step, sampled tokens/s (response tokens over the median time), the share of
wasted decode positions (rows kept in the batch after they finished), and the speedup over
`per-prompt-generate`. Targets (issue 14): CPU tiny >= 3x; GPU tiny >= 10x; GPU Qwen-shaped exprl >= 0.8x
the sampled tokens/s of `hf-generate-one-call`.

    pytest benchmarks/bench_rollout.py --benchmark-enable        # or `exprl bench rollout [--quick]`
"""

from __future__ import annotations

import pytest
import torch
from common import CUDA, DEVICE, QUICK, Report, compare, fmt, measure, ratio
from transformers import GenerationConfig

from exprl import batching
from exprl.models.generation import sample_tokens, stream_seed

if QUICK:
    STEP = {"prompts": 2, "samples": 2, "new_tokens": 8}
    QWEN = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 1, "num_attention_heads": 2,
            "num_key_value_heads": 1, "step": STEP}  # fmt: skip
elif CUDA:
    STEP = {"prompts": 8, "samples": 8, "new_tokens": 64}
    QWEN = {"hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24, "num_attention_heads": 14,
            "num_key_value_heads": 2, "step": {"prompts": 8, "samples": 8, "new_tokens": 128}}  # fmt: skip
else:  # on CPU the V=151936 output layer dominates: a smaller step keeps the run to minutes
    STEP = {"prompts": 8, "samples": 8, "new_tokens": 64}
    QWEN = {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 2, "step": {"prompts": 4, "samples": 8, "new_tokens": 32}}  # fmt: skip
ROUNDS = 1 if QUICK else 3
PATHS = ["per-prompt-generate", "hf-generate-one-call", "hf-generate-batch", "exprl", "exprl-compiled"]
TARGETS = {("tiny", "cpu"): 3.0, ("tiny", "cuda"): 10.0}

REPORT = Report("bench_rollout", "Rollout benchmark: one step's sampling, per-prompt generate vs exprl",
                tiny_step=STEP, qwen_shape={k: v for k, v in QWEN.items() if k != "step"},
                qwen_step=QWEN["step"], rounds=ROUNDS)  # fmt: skip


class Workload:
    """A model and one step's prompts (token ids), with the sampling settings of the default run."""

    def __init__(self, name, model, prompts, eos_ids, pad_id, step):
        self.name, self.model, self.prompts = name, model.eval(), prompts
        self.eos_ids, self.pad_id = eos_ids, pad_id
        self.samples, self.new_tokens = step["samples"], step["new_tokens"]


@pytest.fixture(scope="module")
def tiny() -> Workload:
    from exprl.data import load_problems
    from exprl.models import load_model_and_tokenizer, tiny_base_path

    model, tokenizer = load_model_and_tokenizer(tiny_base_path())
    problems = load_problems("builtin:all:3:train:256", seed=0)[: STEP["prompts"]]
    prompts = [torch.tensor(tokenizer(p.prompt)["input_ids"]) for p in problems]
    eos = model.generation_config.eos_token_id
    eos_ids = [eos] if isinstance(eos, int) else list(eos)
    return Workload("tiny", model.to(DEVICE), prompts, eos_ids, tokenizer.pad_token_id, STEP)


@pytest.fixture(scope="module")
def qwen() -> Workload:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    shape = {k: v for k, v in QWEN.items() if k != "step"}
    config = Qwen2Config(vocab_size=151936, max_position_embeddings=512, tie_word_embeddings=True, **shape)
    torch.manual_seed(0)
    dtype = torch.bfloat16 if CUDA else torch.float32
    model = Qwen2ForCausalLM(config).to(device=DEVICE, dtype=dtype)
    generator = torch.Generator().manual_seed(0)
    step = QWEN["step"]
    lengths = torch.randint(16, 49, (step["prompts"],), generator=generator)
    prompts = [torch.randint(2000, 151936, (int(n),), generator=generator) for n in lengths]
    return Workload("qwen-shaped", model, prompts, list(range(151936 // 100)), 151935, step)


def generation_config(w: Workload, **extra) -> GenerationConfig:
    return GenerationConfig(max_new_tokens=w.new_tokens, do_sample=True, temperature=1.0, top_p=1.0, top_k=0,
                            eos_token_id=w.eos_ids, pad_token_id=w.pad_id, **extra)  # fmt: skip


def cut(rows: torch.Tensor, eos_ids: list[int]) -> list[int]:
    """Response lengths of generated rows (B, R): up to and including the first eos, else R."""
    is_eos = torch.isin(rows, torch.tensor(eos_ids, device=rows.device))
    first = torch.where(is_eos.any(1), is_eos.int().argmax(1) + 1, rows.shape[1])
    return first.tolist()


@torch.no_grad()
def per_prompt_generate(w: Workload) -> list[list[int]]:
    """exprl's sampling before issue 14: one `generate` per prompt for its G rows. Returns, per call,
    the response lengths of its rows."""
    out = []
    for index, prompt in enumerate(w.prompts):
        torch.manual_seed(stream_seed(0, index))
        ids = prompt[None].repeat(w.samples, 1).to(DEVICE)
        rows = w.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                generation_config=generation_config(w))  # fmt: skip
        out.append(cut(rows[:, ids.shape[1] :], w.eos_ids))
    return out


@torch.no_grad()
def one_call_generate(w: Workload) -> list[list[int]]:
    """One plain `generate` for all P x G rows, left-padded (exprl.batching.pad_sequences)."""
    rows = [p for p in w.prompts for _ in range(w.samples)]
    ids, mask = batching.pad_sequences(rows, w.pad_id, side="left")
    torch.manual_seed(0)
    out = w.model.generate(input_ids=ids.to(DEVICE), attention_mask=mask.to(DEVICE),
                           generation_config=generation_config(w))  # fmt: skip
    return [cut(out[:, ids.shape[1] :], w.eos_ids)]


@torch.no_grad()
def continuous_batching(w: Workload) -> list[list[int]]:
    """transformers' `generate_batch` (continuous batching, paged attention) for all P x G rows."""
    from transformers.generation.configuration_utils import ContinuousBatchingConfig

    torch.manual_seed(0)
    config = generation_config(w, num_return_sequences=w.samples)
    pages = -(-(max(len(p) for p in w.prompts) + w.new_tokens) // 128)
    paged = ContinuousBatchingConfig(page_size=128, num_blocks=2 * pages * len(w.prompts) * w.samples,
                                     max_batch_tokens=2048)  # fmt: skip
    outputs = w.model.generate_batch([p.tolist() for p in w.prompts], generation_config=config,
                                     continuous_batching_config=paged)  # fmt: skip
    return [[len(o.generated_tokens) for o in outputs.values()]]


def exprl_sampler(w: Workload, compile_decoding: bool = False):
    return sample_tokens(
        w.model,
        w.prompts,
        w.samples,
        eos_ids=w.eos_ids,
        pad_id=w.pad_id,
        prompt_seeds=[stream_seed(0, 0, i) for i in range(len(w.prompts))],
        max_new_tokens=w.new_tokens,
        compile_decoding=compile_decoding,
    )


def wasted_share(calls: list[list[int]]) -> float:
    """Decode positions spent on finished rows when each call runs all its rows to its longest one
    (how `generate` batches): for a call whose longest row has n tokens, n - 1 forwards after the prefill."""
    wasted = sum(max(lengths) - n for lengths in calls for n in lengths)
    positions = sum(len(lengths) * (max(lengths) - 1) for lengths in calls)
    return wasted / max(positions, 1)


def record(w: Workload, path: str, timing, tokens: int, wasted: float | None) -> None:
    REPORT.add(model=w.name, path=path, median_s=timing.median_s, min_s=timing.min_s, rounds=timing.rounds,
               sampled_tokens=tokens, tokens_per_s=tokens / timing.median_s, wasted_share=wasted)  # fmt: skip


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("model", ["tiny", "qwen"])
def test_bench_rollout(benchmark, request, model, path):
    w = request.getfixturevalue(model)
    if path == "exprl-compiled" and not CUDA:
        pytest.skip("compiled decoding (CUDA graphs) needs CUDA")
    if path.startswith("exprl"):
        compiled = path == "exprl-compiled"
        timing = measure(
            benchmark, exprl_sampler, w, compiled, rounds=ROUNDS, warmup_rounds=2 if compiled else 1
        )
        out = timing.result
        record(w, path, timing, out.stats.sampled_tokens, out.stats.wasted_share)
        if model == "tiny":  # exact: the rows of one prompt alone are the rows it got in the batch
            alone = sample_tokens(w.model, w.prompts[:1], w.samples, eos_ids=w.eos_ids, pad_id=w.pad_id,
                                  prompt_seeds=[stream_seed(0, 0, 0)],
                                  max_new_tokens=w.new_tokens)  # fmt: skip
            assert [r.tolist() for r in alone.response_ids] == [
                r.tolist() for r in out.response_ids[: w.samples]
            ]
        return
    fn, rounds, warmup = {
        "per-prompt-generate": (per_prompt_generate, ROUNDS, 1),
        "hf-generate-one-call": (one_call_generate, ROUNDS, 1),
        "hf-generate-batch": (continuous_batching, ROUNDS, 1),
    }[path]
    timing = measure(benchmark, fn, w, rounds=rounds, warmup_rounds=warmup)
    calls = timing.result
    wasted = None if path == "hf-generate-batch" else wasted_share(calls)
    record(w, path, timing, sum(sum(c) for c in calls), wasted)


def summary() -> dict:
    """Per model: exprl's speedup over the per-prompt path (median time per step) and its sampled tokens/s
    over one plain generate call's, with the issue's targets."""
    out = {}
    for model in dict.fromkeys(r["model"] for r in REPORT.rows):
        rows = {r["path"]: r for r in REPORT.rows if r["model"] == model}
        old, new = rows.get("per-prompt-generate"), rows.get("exprl")
        one = rows.get("hf-generate-one-call")
        out[model] = {
            "speedup_over_per_prompt": ratio(old and old["median_s"], new and new["median_s"]),
            "tokens_per_s_over_one_call": ratio(new and new["tokens_per_s"], one and one["tokens_per_s"]),
            "target_speedup": TARGETS.get((model, DEVICE)),
        }
    return out


COLUMNS = {
    "model": lambda r: r["model"],
    "path": lambda r: r["path"],
    "median ms/step": lambda r: fmt(1e3 * r["median_s"], ".0f"),
    "min ms/step": lambda r: fmt(1e3 * r["min_s"], ".0f"),
    "sampled tokens": lambda r: str(r["sampled_tokens"]),
    "sampled tokens/s": lambda r: fmt(r["tokens_per_s"], ".0f"),
    "wasted decode share": lambda r: fmt(r["wasted_share"], ".1%"),
    "speedup vs per-prompt": lambda r: fmt(r.get("speedup"), ".1f", "x"),
}


@pytest.fixture(scope="module", autouse=True)
def write_table(request):
    yield
    # on a loaded shared box, `--benchmark-timer time.process_time` times the CPU work of each path
    REPORT.header["timer"] = str(request.config.getoption("benchmark_timer"))
    compare(REPORT.rows, baseline={"path": "per-prompt-generate"}, match=["model"], metric="median_s",
            name="speedup", baseline_over_row=True)  # fmt: skip
    ratios = summary()
    notes = []
    for model, s in ratios.items():
        target = s["target_speedup"]
        notes.append(f"- {model}: exprl {fmt(s['speedup_over_per_prompt'], '.1f', 'x')} faster per step than "
                     f"per-prompt generate" + (f" (target >= {target:.0f}x)" if target else "") +
                     f"; sampled tokens/s {fmt(s['tokens_per_s_over_one_call'], '.2f', 'x')} one plain "
                     "generate call's")  # fmt: skip
        print("\n" + notes[-1])
    REPORT.write(COLUMNS, summary=ratios, notes=notes)
