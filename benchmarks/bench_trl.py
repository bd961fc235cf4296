"""The loss step inside TRL's GRPOTrainer: TRL's stock loss against exprl's (`ExpRLGRPOTrainer`).

    pytest benchmarks/bench_trl.py --benchmark-enable         # V=32768 (the issue's size)
    EXPRL_BENCH_QUICK=1 pytest benchmarks/bench_trl.py         # small shapes, a smoke run

One trainer, one batch, two loss paths, forward + backward through the whole model:
  * "trl stock": `GRPOTrainer._compute_loss`. TRL 1.16 scores the completion through its fused LM head,
    which projects the hidden states to the vocabulary in chunks and never holds the (B, T, V) logits.
  * "exprl": `ExpRLGRPOTrainer._compute_loss`: the model's (B, T+1, V) logits, then `entropy_pg_loss`.
Same options for both (dapo, clip 0.2/0.28, delta 3, entropy_coef 1e-3, fp32), a Llama with V=32768,
hidden 512, 2 layers; B completions of T tokens after 32 prompt tokens, B x T = 2048 and 8192 (TRL's
head works in tiles of 4096 tokens x 32768 vocabulary entries, so the second size is where its tiling
starts to bound its memory).

Reported: median wall time and the peak memory of the step above what the model, its gradients (kept
allocated between steps) and the inputs hold (benchmarks/common.py: a child process per measurement),
and exprl's time and peak against TRL's.
"""

from __future__ import annotations

import tempfile

import pytest
import torch
from common import QUICK, Report, compare, fmt, measure, peak_memory_mib

CASES = ["trl stock", "exprl"]
VOCAB, HIDDEN, LAYERS, PROMPT = (1024, 64, 1, 8) if QUICK else (32768, 512, 2, 32)
SIZES = [(4, 16)] if QUICK else [(8, 256), (16, 512)]  # (completions B, completion tokens T)
ROUNDS = 1 if QUICK else 2
REPORT = Report(
    "bench_trl",
    "GRPO loss step in TRL's GRPOTrainer: TRL stock vs exprl",
    vocab=VOCAB,
    hidden=HIDDEN,
    layers=LAYERS,
    prompt_tokens=PROMPT,
    rounds=ROUNDS,
)


def prepare(case: str, batch: int, completion: int):
    """The trainer and a batch of `batch` completions of `completion` tokens; returns the step (loss
    forward + backward) of `case`."""
    from datasets import Dataset
    from transformers import LlamaConfig, LlamaForCausalLM
    from trl import GRPOConfig, GRPOTrainer

    from exprl.integrations.trl import ExpRLGRPOTrainer

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        intermediate_size=2 * HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=4,
        num_key_value_heads=4,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=None,
    )
    args = GRPOConfig(
        output_dir=tempfile.mkdtemp(prefix="bench_trl_"),
        loss_type="dapo",
        epsilon_high=0.28,
        delta=3.0,
        entropy_coef=1e-3,
        per_device_train_batch_size=batch,
        num_generations=batch,
        max_completion_length=completion,
        use_cpu=not torch.cuda.is_available(),
        bf16=False,
        report_to=[],
    )
    trainer = ExpRLGRPOTrainer(
        model=LlamaForCausalLM(config),
        reward_funcs=lambda completions, **_: [0.0] * len(completions),
        args=args,
        train_dataset=Dataset.from_list([{"prompt": "x"}]),
        processing_class=_tokenizer(),
    )
    model = trainer.model
    model.train()
    trainer.current_gradient_accumulation_steps = 1
    device = next(model.parameters()).device
    g = torch.Generator().manual_seed(0)
    completion_ids = torch.randint(2, VOCAB, (batch, completion), generator=g)
    inputs = {
        "prompt_ids": torch.randint(2, VOCAB, (batch, PROMPT), generator=g),
        "prompt_mask": torch.ones(batch, PROMPT, dtype=torch.long),
        "completion_ids": completion_ids,
        "completion_mask": torch.ones(batch, completion, dtype=torch.long),
        "advantages": torch.randn(batch, generator=g),
        "num_items_in_batch": torch.tensor(batch * completion),
        "old_per_token_logps": torch.full((batch, completion), -float(torch.log(torch.tensor(VOCAB)))),
    }
    inputs = {k: v.to(device) for k, v in inputs.items()}
    compute_loss = GRPOTrainer._compute_loss if case == "trl stock" else ExpRLGRPOTrainer._compute_loss

    def step() -> float:
        loss = compute_loss(trainer, model, inputs)
        loss.backward()
        return loss.item()

    step()  # warm-up; the gradients stay allocated, as they would between steps
    return step


def _tokenizer():
    """A word-level tokenizer (the trainer needs one; the batch is token ids already)."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<eos>": 1, "x": 2}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="x"))
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>")


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize(("batch", "completion"), SIZES)
def test_bench_trl_loss_step(benchmark, case, batch, completion):
    step = prepare(case, batch, completion)  # warmed up
    timing = measure(benchmark, step, rounds=ROUNDS, warmup_rounds=0)
    peak = peak_memory_mib(__file__, "prepare", case=case, batch=batch, completion=completion)
    REPORT.add(
        case=case,
        V=VOCAB,
        B=batch,
        T=completion,
        tokens=batch * completion,
        median_ms=1e3 * timing.median_s,
        peak_mib=peak,
    )


@pytest.fixture(scope="module", autouse=True)
def write_table():
    yield
    for metric, name, baseline_over_row in (
        ("peak_mib", "peak_vs_trl", False),
        ("median_ms", "speedup_vs_trl", True),
    ):
        compare(
            REPORT.rows,
            baseline={"case": "trl stock"},
            match=["V", "tokens"],
            metric=metric,
            name=name,
            baseline_over_row=baseline_over_row,
        )
    REPORT.write(
        {
            "case": lambda r: r["case"],
            "V": lambda r: str(r["V"]),
            "B x T": lambda r: f"{r['B']} x {r['T']}",
            "median ms": lambda r: fmt(r["median_ms"], ".1f"),
            "speedup vs TRL": lambda r: fmt(r.get("speedup_vs_trl"), ".2f", "x"),
            "peak MiB": lambda r: fmt(r["peak_mib"], ".0f"),
            "peak vs TRL": lambda r: fmt(r.get("peak_vs_trl"), ".2f", "x"),
        },
        notes=[
            "TRL 1.16's stock path scores tokens through a chunked fused LM head (no B x T x V logits);",
            "exprl's path takes the model's logits, so its peak holds the (B, T+1, V) logits and their",
            "gradient. The hidden-state op `linear_entropy_pg_loss` (issue 13) removes them.",
        ],
    )
