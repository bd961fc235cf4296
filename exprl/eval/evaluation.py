"""Sampling-based evaluation of a policy: pass@k per split, response length, entropy, never-solved share.

For each problem we sample `n` completions from the bare prompt, grade each with a sparse verifier
(1 = correct final answer), and estimate pass@k with the unbiased estimator. The token entropy is the
entropy of the policy's next-token distribution (at the sampling temperature) at every sampled response
token, taken by the sampler from the logits it draws the token from (`sample(..., with_entropy=True)`).
"""

import math
from collections.abc import Callable, Sequence
from numbers import Integral
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from exprl.data import Problem
from exprl.eval.passk import pass_at_k
from exprl.eval.report import EvalReport, ProblemResult, SplitMetrics
from exprl.eval.settings import EvalSettings
from exprl.models import load_model_and_tokenizer, prompt_text
from exprl.models.generation import sample
from exprl.rewards import Rollout, build_reward

# Report splits in this order; unknown split names follow alphabetically.
_SPLIT_ORDER = {"train": 0, "test": 1, "ood": 2}


def _validate(problems: Sequence[Problem], n: int, ks: Sequence[int], temperature: float) -> list[int]:
    if not isinstance(problems, Sequence) or len(problems) == 0:
        raise ValueError("problems must be a non-empty sequence of Problem")
    for i, p in enumerate(problems):
        if not isinstance(p, Problem):
            raise TypeError(f"problems[{i}] must be a Problem, got {type(p).__name__}")
    if isinstance(n, bool) or not isinstance(n, Integral) or n < 1:
        raise ValueError(f"n must be an int >= 1, got {n!r}")
    if isinstance(ks, int | str) or len(ks) == 0:
        raise ValueError(f"ks must be a non-empty sequence of ints, got {ks!r}")
    for k in ks:
        if isinstance(k, bool) or not isinstance(k, Integral) or not 1 <= k <= n:
            raise ValueError(f"ks: every k must be an int in [1, n={n}], got {k!r}")
    if not isinstance(temperature, int | float) or not math.isfinite(temperature) or temperature < 0:
        raise ValueError(f"temperature must be a finite number >= 0 (0 = greedy), got {temperature!r}")
    return sorted(set(int(k) for k in ks))


def evaluate(
    model: torch.nn.Module,
    tokenizer: Any,
    problems: Sequence[Problem],
    *,
    n: int,
    ks: Sequence[int],
    temperature: float = 1.0,
    max_new_tokens: int = 64,
    seed: int = 0,
    batch_size: int = 64,
    verifier: str = "exact",
    progress: bool = True,
    format_prompt: Callable[[Problem], str] | None = None,
) -> EvalReport:
    """Sample `n` completions per problem, grade them with the sparse `verifier`, aggregate per split.

    `temperature` 0 means greedy decoding (entropy is then measured at temperature 1). `batch_size`
    counts sequences per generation batch. Sampling is seeded: the same arguments (batch_size
    included, since batch composition changes padding) give the same report. `format_prompt` turns a
    problem into the model's input text (default: `problem.prompt`; pass the trainer's chat-template
    wrapper to evaluate a chat model the way it was trained).
    Raises ValueError/TypeError naming the argument for bad input.
    """
    ks = _validate(problems, n, ks, temperature)
    if isinstance(batch_size, bool) or not isinstance(batch_size, Integral) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, Integral) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
    reward = build_reward(verifier)
    greedy = temperature == 0
    entropy_temperature = 1.0 if greedy else float(temperature)

    was_training = model.training
    model.eval()
    # Whole problems per generation call, so the progress bar advances per problem.
    problems_per_call = max(1, batch_size // n)
    correct: list[int] = []
    lengths: list[list[int]] = []
    entropies: list[list[float]] = []
    truncated: list[int] = []
    ungraded: list[int] = []
    try:
        with tqdm(total=len(problems), desc="eval", unit="problem", disable=not progress) as bar:
            for call, start in enumerate(range(0, len(problems), problems_per_call)):
                chunk = list(problems[start : start + problems_per_call])
                samples = sample(
                    model,
                    tokenizer,
                    [format_prompt(p) if format_prompt else p.prompt for p in chunk],
                    n,
                    max_new_tokens=max_new_tokens,
                    temperature=entropy_temperature,
                    greedy=greedy,
                    batch_size=batch_size,
                    generator_seed=seed + call,
                    with_entropy=True,
                )
                scores = reward.score(
                    [
                        Rollout(problem=chunk[s.prompt_index], response=s.text, truncated=s.truncated)
                        for s in samples
                    ]
                )
                for j in range(len(chunk)):
                    mine = [i for i, s in enumerate(samples) if s.prompt_index == j]
                    correct.append(sum(1 for i in mine if scores[i] is not None and scores[i] >= 0.5))
                    ungraded.append(sum(1 for i in mine if scores[i] is None))
                    truncated.append(sum(1 for i in mine if samples[i].truncated))
                    lengths.append([len(samples[i].response_ids) for i in mine])
                    entropies.append([float(samples[i].entropy.sum()) for i in mine])
                bar.update(len(chunk))
    finally:
        model.train(was_training)

    results = [
        ProblemResult(id=p.id, split=p.split, family=p.family, level=p.level, correct=c)
        for p, c in zip(problems, correct, strict=True)
    ]
    splits: dict[str, SplitMetrics] = {}
    for split in sorted({p.split for p in problems}, key=lambda s: (_SPLIT_ORDER.get(s, 99), s)):
        idx = [i for i, p in enumerate(problems) if p.split == split]
        num_tokens = sum(sum(lengths[i]) for i in idx)
        splits[split] = SplitMetrics(
            num_problems=len(idx),
            pass_at_k={k: sum(pass_at_k(n, correct[i], k) for i in idx) / len(idx) for k in ks},
            mean_response_length=num_tokens / (len(idx) * n),
            mean_entropy=sum(sum(entropies[i]) for i in idx) / max(num_tokens, 1),
            never_solved=sum(1 for i in idx if correct[i] == 0) / len(idx),
            truncated=sum(truncated[i] for i in idx) / (len(idx) * n),
            ungraded=sum(ungraded[i] for i in idx),
        )
    settings = {
        "n": int(n),
        "ks": ks,
        "temperature": float(temperature),
        "max_new_tokens": int(max_new_tokens),
        "seed": int(seed),
        "batch_size": int(batch_size),
        "verifier": verifier,
        "entropy_temperature": entropy_temperature,
    }
    return EvalReport(settings=settings, splits=splits, problems=results)


def evaluate_with(
    model: torch.nn.Module,
    tokenizer: Any,
    settings: EvalSettings,
    *,
    format_prompt: Callable[[Problem], str] | None = None,
    progress: bool = True,
) -> EvalReport:
    """`evaluate` on `settings.problems` with the sampling and grading of `settings`."""
    return evaluate(
        model,
        tokenizer,
        settings.load_problems(),
        n=settings.n,
        ks=settings.ks,
        temperature=settings.temperature,
        max_new_tokens=settings.max_new_tokens,
        seed=settings.seed,
        batch_size=settings.batch_size,
        verifier=settings.verifier,
        progress=progress,
        format_prompt=format_prompt,
    )


def evaluate_model_dir(
    model_path: str | Path, settings: EvalSettings, *, chat_template: str = "auto", progress: bool = True
) -> EvalReport:
    """Load a model ("tiny" or a Hugging Face model directory; on CUDA when there is one) and evaluate it
    with `settings`, prompts formatted as the trainer formats them (`chat_template` "auto" | "never")."""
    model, tokenizer = load_model_and_tokenizer(model_path)
    if torch.cuda.is_available():
        model = model.cuda()
    return evaluate_with(
        model,
        tokenizer,
        settings,
        format_prompt=lambda p: prompt_text(p, tokenizer, chat_template),
        progress=progress,
    )
