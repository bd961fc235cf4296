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


def fit_context(
    problems: Sequence[Problem],
    tokenizer,
    model_config,
    cfg: TrainConfig,
    announce: bool = True,
    with_reference: bool = False,
) -> list[Problem]:
    """The problems whose prompt plus `rollout.max_new_tokens` (SFT, `with_reference`: plus the reference
    solution and eos) fits the model's positions (`max_position_embeddings`; no limit when the model has
    none). One that does not is a ValueError naming its file, line and the lengths; with
    `data.skip_too_long` it is left out, and the count of those left out is printed when `announce`."""
    positions = getattr(model_config, "max_position_embeddings", None)
    if positions is None:
        return list(problems)
    new = 0 if with_reference else cfg.rollout.max_new_tokens
    if new >= positions:
        raise ValueError(
            f"rollout.max_new_tokens={new} leaves no room for a prompt in the model's {positions} positions"
        )
    kept, skipped = [], []
    for problem in problems:
        length = len(tokenizer(prompt_text(problem, tokenizer, cfg.model.chat_template))["input_ids"])
        if with_reference:
            length += len(tokenizer(problem.reference, add_special_tokens=False)["input_ids"]) + 1
        if length + new <= positions:
            kept.append(problem)
            continue
        where = problem.origin or f"{cfg.data.train} (problem {problem.id})"
        what = (
            f"{where}: the prompt and reference solution are {length} tokens, and the model has {positions} "
            "positions"
            if with_reference
            else f"{where}: the prompt is {length} tokens; with rollout.max_new_tokens={new} it needs "
            f"{length + new} positions, and the model has {positions}"
        )
        if not cfg.data.skip_too_long:
            raise ValueError(what + " (set data.skip_too_long=true to skip such problems)")
        skipped.append(what)
    if skipped and announce:
        print(f"data.skip_too_long: skipped {len(skipped)} of {len(problems)} problems; first: {skipped[0]}")
    return kept


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


def counter_increments(
    judge: RewardSource, verifier: RewardSource, before: dict[str, dict[str, int]]
) -> dict[str, float]:
    """What the judge's and the verifier's counters grew by since `before` (`counter_snapshot`), on this
    rank: "dropped/<cause>" for the judge's causes of a missing grade (timeout, server_error, unparsed...),
    "judge/<name>" for its other counters (`informational_counters`), "verifier/<name>" for the verifier's."""
    informational = getattr(judge, "informational_counters", ())
    out = {}
    for role, source in (("judge", judge), ("verifier", verifier)):
        for key, n in source.counters.items():
            name = f"{role}/{key}" if role == "verifier" or key in informational else f"dropped/{key}"
            out[name] = float(n - before[role].get(key, 0))
    return out


def counter_snapshot(judge: RewardSource, verifier: RewardSource) -> dict[str, dict[str, int]]:
    return {"judge": dict(judge.counters), "verifier": dict(verifier.counters)}


def build_rewards(cfg: TrainConfig, reference=None, tokenizer=None) -> tuple[RewardSource, RewardSource]:
    """(judge, sparse verifier) from `cfg.reward`. Judges get the mode and delimiter; verifiers grade the
    final answer only. Rewards that may never return get `reward.timeout_s` per call. An error building
    the judge names the config file and reward.options. With reward.judge_model "reference" the hf judge
    gets the frozen `reference` engine's module and the policy's `tokenizer` (score under
    `generation_mode(reference)`: whole weights)."""
    from exprl.rewards import build_reward, is_judge

    options = dict(cfg.reward.options)
    if cfg.reward.judge_model == "reference":
        if reference is None:
            raise ValueError("reward.judge_model: reference needs the trainer's reference engine")
        options.update(model=reference.module, tokenizer=tokenizer)
    if is_judge(cfg.reward.name):  # judges grade against the reference, per response or per segment
        r = cfg.reward
        options.update(mode=r.mode, delimiter=r.delimiter, process_context=r.process_context)
    try:
        judge = build_reward(cfg.reward.name, call_timeout_s=cfg.reward.timeout_s, **options)
    except (ValueError, TypeError, FileNotFoundError) as error:
        raise type(error)(f"{cfg.source}: reward.options of {cfg.reward.name!r}: {error}") from error
    return judge, build_reward(cfg.reward.sparse, call_timeout_s=cfg.reward.timeout_s)
