"""`exprl pretrain`: train the tiny base model from scratch on the built-in tasks' reference solutions.

It trains with plain PyTorch on one process (no DeepSpeed) and is graded like every other model: the
shared answer extraction and the unbiased pass@k estimator.

The training mixture is mostly the easy levels, with a thin slice of the harder ones, so the result
solves easy problems and only rarely solves hard ones: the coverage gap that ExpRL is meant to close.
The run is seeded end to end (data stream, initialisation, dropout-free training, sampling for the
evaluation) and, on the same machine and torch version, reproduces the same weights.
"""

import argparse
import json
import math
import os
import platform
import random
import shlex
import sys
import time
from pathlib import Path

import torch
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

from exprl.data import FAMILIES, LEVELS, builtin_problems, iter_problems
from exprl.eval.passk import mean_pass_at_k
from exprl.kernels import IGNORE_INDEX
from exprl.models.generation import sample
from exprl.models.tokenizer import build_tokenizer
from exprl.rewards.answers import extract_answer, same_answer

# Default share of training sequences drawn from each level (train split only).
LEVEL_MIX = {1: 0.5, 2: 0.45, 3: 0.03, 4: 0.02}


def tiny_config(vocab_size: int, pad_id: int, eos_id: int) -> LlamaConfig:
    """The tiny base model's architecture: a 4-layer Llama, about 0.8M parameters."""
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=128,
        intermediate_size=352,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        pad_token_id=pad_id,
        eos_token_id=eos_id,
        bos_token_id=None,
    )


def parse_level_mix(text: str) -> dict[int, float]:
    """Parse "1:0.5,2:0.45,3:0.05" into {1: 0.5, 2: 0.45, 3: 0.05}; levels must exist, weights be >= 0."""
    try:
        mix = {int(lv): float(w) for lv, w in (item.split(":") for item in text.split(","))}
    except ValueError:
        raise ValueError(f"--level-mix {text!r}: expected 'level:weight,level:weight,...'") from None
    if not set(mix) <= set(LEVELS) or any(w < 0 for w in mix.values()) or sum(mix.values()) <= 0:
        raise ValueError(f"--level-mix {text!r}: levels must be in {LEVELS}, weights >= 0 and not all 0")
    return mix


def _batches(tokenizer, batch_size: int, seed: int, level_mix: dict[int, float]):
    """Endless (input_ids [B, L], labels [B, L]) int64 batches; labels are -100 on prompt and padding.

    Every row's level is drawn with ``level_mix`` weights (mixed batches train more smoothly than
    one-level batches, which were tried and learned less in the same number of steps).
    """
    streams = {level: iter_problems(None, level, "train", seed) for level in LEVELS}
    rng = random.Random(f"exprl-pretrain-mix:{seed}")
    levels, weights = list(level_mix), list(level_mix.values())
    while True:
        rows = []
        for level in rng.choices(levels, weights, k=batch_size):
            problem = next(streams[level])
            prompt = tokenizer(problem.prompt)["input_ids"]
            completion = tokenizer(problem.reference)["input_ids"] + [tokenizer.eos_token_id]
            rows.append((prompt + completion, [IGNORE_INDEX] * len(prompt) + completion))
        width = max(len(ids) for ids, _ in rows)
        input_ids = torch.full((batch_size, width), tokenizer.pad_token_id, dtype=torch.long)
        labels = torch.full((batch_size, width), IGNORE_INDEX, dtype=torch.long)
        for r, (ids, lab) in enumerate(rows):
            input_ids[r, : len(ids)] = torch.tensor(ids)
            labels[r, : len(lab)] = torch.tensor(lab)
        yield input_ids, labels


def train(
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    level_mix: dict[int, float] | None = None,
    log_every: int = 50,
) -> tuple[LlamaForCausalLM, object]:
    """Train from scratch; returns (model in eval mode, tokenizer). AdamW, warmup then cosine decay."""
    tokenizer = build_tokenizer()
    torch.manual_seed(seed)
    model = LlamaForCausalLM(tiny_config(len(tokenizer), tokenizer.pad_token_id, tokenizer.eos_token_id))
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.01)
    warmup = max(1, min(100, steps // 10))

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    model.train()
    batches = _batches(tokenizer, batch_size, seed, level_mix or LEVEL_MIX)
    start = time.time()
    for step in range(steps):
        input_ids, labels = next(batches)
        attention_mask = (input_ids != tokenizer.pad_token_id).long()
        loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        if log_every and (step % log_every == 0 or step == steps - 1):
            print(f"step {step:5d}  loss {loss.item():.4f}  {time.time() - start:6.1f}s", flush=True)
    model.eval()
    return model, tokenizer


def evaluate_levels(
    model, tokenizer, n_per_family: int, k: int, seed: int, split: str = "test", max_new_tokens: int = 96
) -> dict:
    """Unbiased pass@1 and pass@k from k samples per problem at temperature 1, per level; a sample is
    correct when its final answer (`extract_answer`) is `same_answer` as the problem's."""
    results = {}
    for level in LEVELS:
        problems = [
            p for family in FAMILIES for p in builtin_problems(family, level, split, n_per_family, seed)
        ]
        samples = sample(
            model,
            tokenizer,
            [p.prompt for p in problems],
            k,
            max_new_tokens=max_new_tokens,
            temperature=1.0,
            batch_size=256,
            generator_seed=seed,
        )
        counts = [0] * len(problems)
        for s in samples:
            answer = extract_answer(s.text)
            counts[s.prompt_index] += answer is not None and same_answer(
                answer, problems[s.prompt_index].answer
            )
        results[f"L{level}"] = {
            "pass@1": round(mean_pass_at_k(k, counts, 1), 4),
            f"pass@{k}": round(mean_pass_at_k(k, counts, k), 4),
            "problems": len(problems),
        }
    return results


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        cpu = next(
            line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")
        )
    except (OSError, StopIteration):
        pass
    return (
        f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, "
        f"python {platform.python_version()}, torch {torch.__version__}"
    )


def _provenance(command: str, args: argparse.Namespace, seconds: float, results: dict | None) -> str:
    lines = [
        "# Provenance of the tiny base model",
        "",
        f"Command: `{command}`",
        "",
        f"- seed {args.seed}, {args.steps} steps, batch {args.batch_size}, peak lr {args.lr}, level mix "
        f"{args.level_mix} (train split, all families), loss on the completion tokens only",
        f"- training wall time {seconds:.0f} s with {args.threads} torch CPU thread(s)",
        f"- machine: {_machine()}",
        "- architecture: LlamaForCausalLM, 4 layers, hidden 128, 4 heads, tied embeddings (see config.json)",
        "- same seed, machine and torch version reproduce the same weights",
    ]
    if results:
        k = args.eval_k
        lines += [
            "",
            f"Evaluation on the test split, {args.eval_n} problems per family and level, {k} samples "
            f"each at temperature 1 (seed {args.seed}), exact final answer:",
            "",
            f"| level | pass@1 | pass@{k} | problems |",
            "|---|---|---|---|",
        ]
        for level, r in results.items():
            lines.append(f"| {level} | {r['pass@1']:.3f} | {r[f'pass@{k}']:.3f} | {r['problems']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Train the tiny base model and write it, its tokenizer, eval.json and PROVENANCE.md to --out."""
    parser = argparse.ArgumentParser(prog="exprl pretrain", description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="output directory (e.g. exprl/assets/tiny-base)")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    default_mix = ",".join(f"{lv}:{w}" for lv, w in LEVEL_MIX.items())
    parser.add_argument("--level-mix", default=default_mix, help="share of each level in the training data")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (1 is fastest on a shared, loaded box)"
    )
    parser.add_argument("--eval-n", type=int, default=25, help="test problems per family and level; 0 skips")
    parser.add_argument("--eval-k", type=int, default=8, help="samples per problem for pass@k")
    parser.add_argument("--eval-max-new-tokens", type=int, default=96)
    args = parser.parse_args(argv)
    for name in ("steps", "batch_size", "threads", "eval_k", "eval_max_new_tokens"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.lr <= 0 or args.eval_n < 0:
        parser.error("--lr must be > 0 and --eval-n >= 0")
    try:
        level_mix = parse_level_mix(args.level_mix)
    except ValueError as err:
        parser.error(str(err))
    torch.set_num_threads(args.threads)
    command = "exprl pretrain " + shlex.join(sys.argv[1:] if argv is None else argv)
    start = time.time()
    model, tokenizer = train(args.steps, args.batch_size, args.lr, args.seed, level_mix)
    seconds = time.time() - start
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    results = None
    if args.eval_n:
        results = evaluate_levels(
            model, tokenizer, args.eval_n, args.eval_k, args.seed, max_new_tokens=args.eval_max_new_tokens
        )
    if results:
        (out / "eval.json").write_text(json.dumps(results, indent=2) + "\n")
        for level, r in results.items():
            print(level, r)
    (out / "PROVENANCE.md").write_text(_provenance(command, args, seconds, results))
    print(f"wrote {out} ({seconds:.0f} s of training)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
