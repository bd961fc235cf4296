"""The RFT baseline (rejection-sampling fine-tuning on the model's own verified samples, as in STaR).

The model samples `group_size` completions for each problem that an RL run would draw (the same problems,
in the same order, with the same number of samples), keeps the completions the sparse verifier accepts,
and is fine-tuned on them with the SFT trainer for the same number of optimizer steps. It learns only from
its own correct outputs: the references are never shown to it, as in ExpRL, but the only signal is the
final answer's correctness, as in sparse GRPO.
"""

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from exprl.data import Problem
from exprl.models.generation import sample
from exprl.rewards import Rollout, build_reward


@dataclass
class DistillationData:
    records: list[dict[str, Any]]  # JSONL records for exprl.data.load_problems: problem, answer, reference
    samples: int  # completions drawn
    sampled_tokens: int  # response tokens drawn, eos included
    problems_solved: int  # problems with at least one kept completion
    seconds: float  # sampling and grading time


def collect_correct_samples(
    model: torch.nn.Module,
    tokenizer: Any,
    problems: Sequence[Problem],
    *,
    group_size: int,
    max_new_tokens: int,
    temperature: float,
    seed: int,
    verifier: str = "exact",
    batch_size: int = 64,
    format_prompt: Callable[[Problem], str] | None = None,
) -> DistillationData:
    """Sample `group_size` completions per problem and keep the ones `verifier` accepts.

    A truncated completion is never kept (it has no end to imitate); identical completions of the same
    problem are kept once. Each kept completion becomes a record whose "reference" is the completion text.
    """
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    start = time.perf_counter()
    prompts = [format_prompt(p) if format_prompt else p.prompt for p in problems]
    samples = sample(
        model,
        tokenizer,
        prompts,
        group_size,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        batch_size=batch_size,
        generator_seed=seed,
    )
    scores = build_reward(verifier).score(
        [Rollout(problem=problems[s.prompt_index], response=s.text, truncated=s.truncated) for s in samples]
    )
    records, seen = [], set()
    for s, score in zip(samples, scores, strict=True):
        if score is None or score < 0.5 or s.truncated or (s.prompt_index, s.text) in seen:
            continue
        seen.add((s.prompt_index, s.text))
        p = problems[s.prompt_index]
        records.append(
            {
                "id": f"{p.id}/self-{len(records)}",
                "problem": p.prompt,
                "answer": p.answer,
                "reference": s.text,
                "level": p.level,
                "split": p.split,
            }
        )
    return DistillationData(
        records=records,
        samples=len(samples),
        sampled_tokens=sum(len(s.response_ids) for s in samples),
        problems_solved=len({index for index, _ in seen}),
        seconds=time.perf_counter() - start,
    )


def write_records(records: Sequence[dict[str, Any]], path: Path, min_records: int) -> int:
    """Write `records` as JSONL, repeated in order until there are at least `min_records` lines (an SFT
    step needs a full batch; repeating is what further epochs over the few examples would do anyway).
    Returns the number of lines written."""
    if not records:
        raise ValueError("records must not be empty")
    lines = [records[i % len(records)] for i in range(max(len(records), min_records))]
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    return len(lines)
