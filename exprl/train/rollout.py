"""Rollout and scoring: problems -> G sampled responses each -> judge and verifier scores.

A rank samples all its prompts x G in one batched decode (`exprl.models.generation`). Each sample has
its own random stream, seeded from (run seed, step, global prompt index, sample index), so the rollouts
of a step do not depend on how the step's prompts are split over ranks, on which rows share a batch or
on anything sampled before: a resumed run and a run on another number of ranks draw the same responses.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from exprl.data import SEGMENT_DELIMITER, Problem
from exprl.models import prompt_text
from exprl.models.generation import DecodeStats, sample_with_stats, stream_seed
from exprl.rewards.base import RewardSource, Rollout
from exprl.train.config import TrainConfig


@dataclass
class RolloutGroups:
    """A rank's rollouts of one step, column by column: the G responses of each of its prompts,
    prompt-major (rollout i belongs to prompt i // G).

    A reward scores each of them as one `exprl.rewards.Rollout` (problem, response text); the
    trainer turns them into `exprl.batching.TrainingBatch` tensors for the loss.
    """

    problems: list[Problem]  # one per rollout
    prompt_ids: list[Tensor]  # int64 (P_i,)
    response_ids: list[Tensor]  # int64 (R_i,), ends with eos unless truncated
    texts: list[str]
    truncated: list[bool]
    scores: list[float | list[float] | None] = field(default_factory=list)  # judge, after truncation rule
    correct: list[float] = field(default_factory=list)  # sparse verifier: 1.0 right answer, 0.0 otherwise

    def __len__(self) -> int:
        return len(self.texts)


@contextlib.contextmanager
def generation_mode(engine, gather_parameters: bool) -> Iterator[torch.nn.Module]:
    """The policy module, ready for sampling under ZeRO-3.

    gather_parameters=True gathers every parameter once per step (and lifts ZeRO's per-module fetch hooks)
    for the whole rollout, so decoding is not an all-gather per token; the gathered copy is released when
    the block ends, before scoring and training. It costs a whole copy of the model per GPU: False leaves
    the parameters sharded, and the sampler then steps all ranks together (each forward is a collective),
    as transformers' `synced_gpus` does.
    """
    if gather_parameters:
        from deepspeed.runtime.zero.stage3 import unwrap_model_for_generation

        with unwrap_model_for_generation(engine) as unwrapped:
            yield unwrapped.module  # the Hugging Face model, its parameters whole until the block ends
    else:
        from transformers.integrations import HfDeepSpeedConfig

        # the sampler (like transformers' synced_gpus) sees ZeRO-3 while a HfDeepSpeedConfig with stage 3
        # is alive (a weak reference): keep one for this rollout only, so rank 0 alone can still generate
        # for evaluation
        marker = HfDeepSpeedConfig({"zero_optimization": {"stage": 3}})
        try:
            yield engine.module
        finally:
            del marker


def generate(
    engine, tokenizer, problems: Sequence[Problem], global_indices: Sequence[int], cfg: TrainConfig, step: int
) -> tuple[RolloutGroups, DecodeStats]:
    """G samples for each problem (temperature, top-p, max new tokens, stop at eos) in one batched decode,
    and what it cost. Sample j of the prompt with global index i draws from the random stream of
    (run seed, step, i, j) only."""
    r = cfg.rollout
    with generation_mode(engine, r.gather_parameters) as model:
        samples, stats = sample_with_stats(
            model,
            tokenizer,
            [
                prompt_text(problem, tokenizer, cfg.model.chat_template, r.system_prompt)
                for problem in problems
            ],
            r.group_size,
            max_new_tokens=r.max_new_tokens,
            temperature=r.temperature,
            top_p=r.top_p,
            prompt_seeds=[stream_seed(cfg.seed, step, index) for index in global_indices],
            compile_decoding=r.compile_decoding,
        )
    out = RolloutGroups(
        problems=[problems[s.prompt_index] for s in samples],
        prompt_ids=[s.prompt_ids for s in samples],
        response_ids=[s.response_ids for s in samples],
        texts=[s.text for s in samples],
        truncated=[s.truncated for s in samples],
    )
    return out, stats


def score(
    rollouts: RolloutGroups, judge: RewardSource, verifier: RewardSource, truncation: str = "zero"
) -> None:
    """Fill `rollouts.scores` (judge) and `rollouts.correct` (sparse verifier) in place.

    Contract (docs/design.md §1): a truncated rollout gets reward 0 (truncation "zero"; "keep", Stage II
    as published, leaves the reward as given, so a right answer cut short still counts); its per-segment
    scores stay as the judge gave them, and the process estimator applies the length-limit rule
    (exprl.train.advantages: EndNorm's differs); a rollout the judge cannot grade (None) is dropped
    (None), as is a segment list whose length disagrees with the response's segments. A judge that raises
    is a bug: the error propagates.
    """
    from exprl.rewards.segments import split_segments

    batch = [
        Rollout(p, t, tr)
        for p, t, tr in zip(rollouts.problems, rollouts.texts, rollouts.truncated, strict=True)
    ]
    scores = list(judge.score(batch))
    if len(scores) != len(batch):
        raise ValueError(f"reward {judge.name!r} returned {len(scores)} scores for {len(batch)} rollouts")
    delimiter = getattr(judge, "delimiter", SEGMENT_DELIMITER)
    for i, (s, rollout) in enumerate(zip(scores, batch, strict=True)):
        if s is None:
            continue
        if judge.granularity == "segment":
            if not isinstance(s, list | tuple) or len(s) != len(split_segments(rollout.response, delimiter)):
                judge.counters["segment_mismatch"] = judge.counters.get("segment_mismatch", 0) + 1
                scores[i] = None
                continue
            scores[i] = [float(v) for v in s]
        else:
            scores[i] = 0.0 if rollout.truncated and truncation == "zero" else float(s)
    rollouts.scores = scores
    correct = verifier.score(batch)
    rollouts.correct = [0.0 if c is None else float(c) for c in correct]


def build_rewards(cfg: TrainConfig, reference=None, tokenizer=None) -> tuple[RewardSource, RewardSource]:
    """(judge, sparse verifier) from `cfg.reward`. Judges get the mode and delimiter; verifiers grade the
    final answer only. With reward.judge_model "reference" the hf judge gets the frozen `reference`
    engine's module and the policy's `tokenizer` (score under `generation_mode(reference)`: whole weights)."""
    from exprl.rewards import build_reward, is_judge

    options = dict(cfg.reward.options)
    if cfg.reward.judge_model == "reference":
        if reference is None:
            raise ValueError("reward.judge_model: reference needs the trainer's reference engine")
        options.update(model=reference.module, tokenizer=tokenizer)
    if is_judge(cfg.reward.name):  # judges grade against the reference, per response or per segment
        r = cfg.reward
        options.update(mode=r.mode, delimiter=r.delimiter, process_context=r.process_context)
    return build_reward(cfg.reward.name, **options), build_reward(cfg.reward.sparse)
