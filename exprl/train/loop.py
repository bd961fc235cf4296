"""The ExpRL / GRPO training loop: sample, score, advantages, loss, step, log, checkpoint.

`run_rl(cfg)` is the whole program; every stage is a function of its own (`step_prompts`, `rollout.generate`,
`rollout.score`, `compute_advantages`, `micro_batches`, `optimize`) so each can be tested alone.

Batch arithmetic. A step draws `rollout.prompts_per_step` prompts (global), each rank takes an equal
contiguous share and samples `group_size` responses for each. The rank's rollouts are split into
`algo.mini_batches` optimizer steps (per PPO epoch), each made of `algo.micro_batch_size`-sequence
micro-batches accumulated by DeepSpeed. Every micro-batch's loss is normalised by the GLOBAL count of
its mini-batch (tokens for token-mean, sequences for the seq-mean modes, summed over micro-batches and
ranks), so the gradient, and the logged loss, do not depend on the rank count or the micro-batch size.
"""

from __future__ import annotations

import contextlib
import dataclasses
import pathlib
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from exprl import batching
from exprl.data import Problem, load_problems, step_prompts
from exprl.errors import RunError
from exprl.kernels import (
    PGLossOutput,
    entropy_pg_loss,
    linear_entropy_pg_loss,
    linear_logprobs_and_entropy,
    logprobs_and_entropy,
)
from exprl.train import advantages, lifecycle, rollout
from exprl.train.config import TrainConfig, batch_layout
from exprl.train.engine import (
    build_engine,
    deepspeed_config,
    fused_linear_head,
    gather_sum,
    global_sum,
    init_distributed,
    load_policy,
    seed_everything,
    through_head,
)
from exprl.train.entropy import EntropyController


def run_rl(cfg: TrainConfig) -> pathlib.Path:
    """Train by `cfg` with RL (ExpRL or GRPO); returns the run directory."""
    rank, world = init_distributed()
    seed_everything(cfg.seed)
    problems = load_problems(cfg.data.train, seed=cfg.seed)
    _, grad_accum = batch_layout(cfg, world)
    on_reference = cfg.reward.judge_model == "reference"  # the judge is the reference engine, built below
    # before the model: a bad reward.options fails fast
    judge, verifier = (None, None) if on_reference else rollout.build_rewards(cfg)
    model, tokenizer = load_policy(cfg)
    problems = rollout.fit_context(problems, tokenizer, model.config, cfg, announce=rank == 0)
    if len(problems) < cfg.rollout.prompts_per_step:
        raise ValueError(
            f"{cfg.source}: data.train: {cfg.data.train!r} holds {len(problems)} problems, fewer than "
            f"rollout.prompts_per_step={cfg.rollout.prompts_per_step}"
        )
    fused_linear = fused_linear_head(model, cfg.algo.fused_linear)
    engine = build_engine(model, deepspeed_config(cfg, cfg.algo.micro_batch_size, grad_accum, world))
    ref = None
    if cfg.algo.kl_coef > 0 or on_reference or cfg.method == "distill":
        ref_ds = deepspeed_config(cfg, cfg.algo.micro_batch_size, grad_accum, world, with_optimizer=False)
        ref = build_engine(load_policy(cfg)[0], ref_ds, trainable=False)
    if on_reference:
        judge, verifier = rollout.build_rewards(cfg, ref, tokenizer)

    state: dict[str, Any] = {
        "step": 0,
        "seen": [],
        "unsolved_first": [],
        "became_solved": [],
        "eval_before": None,
    }
    state, logger, bar, saved = lifecycle.begin_run(engine, tokenizer, cfg, rank, state)
    first, warned = state["step"], False
    for step in range(first, cfg.steps):
        metrics = train_step(
            engine, ref, tokenizer, judge, verifier, problems, cfg, step, state, fused_linear
        )
        warned = check_dropped(metrics, judge, cfg, step, first=step == first, warned=warned)
        saved = lifecycle.end_step(engine, cfg, state, metrics, logger, bar)
    lifecycle.end_run(engine, tokenizer, cfg, state, logger, bar, saved, rank)
    return cfg.run_dir


def train_step(
    engine,
    ref,
    tokenizer,
    judge,
    verifier,
    problems: Sequence[Problem],
    cfg: TrainConfig,
    step: int,
    state: dict[str, Any],
    fused_linear: bool,
) -> dict[str, float]:
    """One RL step on this rank's share of the step's prompts; returns global metrics (all ranks agree).
    fused_linear: the loss and log-prob passes go through the fused linear ops (`optimize`)."""
    rank, world = dist.get_rank(), dist.get_world_size()
    indices = step_prompts(len(problems), cfg.rollout.prompts_per_step, step, cfg.seed, cfg.data.shuffle)
    share = cfg.rollout.prompts_per_step // world
    mine = range(rank * share, (rank + 1) * share)
    t0 = time.perf_counter()
    ro, decode = rollout.generate(
        engine,
        tokenizer,
        [problems[indices[j]] for j in mine],
        [step * cfg.rollout.prompts_per_step + j for j in mine],
        cfg,
        step,
    )
    t1 = time.perf_counter()
    counters_before = rollout.counter_snapshot(judge, verifier)
    with judge_weights(ref, cfg):
        rollout.score(ro, judge, verifier, cfg.reward.truncation)
    t2 = time.perf_counter()
    distill: dict[str, float] = {}
    if cfg.method == "distill":
        token_adv = distill_advantages(engine, ref, ro, tokenizer, cfg)
        gaps = global_sum([-float(sum(a.sum() for a in token_adv)), float(sum(a.numel() for a in token_adv))])
        distill["distill/reverse_kl"] = gaps[0] / max(gaps[1], 1.0)
    else:
        token_adv = compute_advantages(ro, tokenizer, cfg)
    controller = EntropyController.from_config(cfg.algo, state.get("entropy_coef"))
    entropy_coef = controller.coef
    kl_ref = ref if cfg.algo.kl_coef > 0 else None
    train_stats = optimize(
        engine, kl_ref, ro, token_adv, tokenizer.pad_token_id, cfg, fused_linear, entropy_coef
    )
    if cfg.algo.entropy_target is not None:  # the next step's coefficient, kept in checkpoints
        state["entropy_coef"] = controller.update(train_stats["entropy"])  # a global mean: ranks agree
    t3 = time.perf_counter()
    metrics = rollout_metrics(ro, cfg.rollout.group_size, state, length_limited(ro, cfg))
    metrics.update(gather_sum(rollout.counter_increments(judge, verifier, counters_before)))
    metrics.update(train_stats)
    metrics.update(distill)
    metrics["entropy_coef"] = entropy_coef
    gen_tokens, positions, wasted = global_sum(
        [float(decode.sampled_tokens), float(decode.decode_positions), float(decode.wasted_positions)]
    )
    metrics.update(
        {
            "time/generation": t1 - t0,
            "time/scoring": t2 - t1,
            "time/training": t3 - t2,
            "throughput/generated_tokens_per_s": gen_tokens / max(t1 - t0, 1e-9),
            "rollout/wasted_decode_share": wasted / max(positions, 1.0),
            "throughput/trained_tokens_per_s": train_stats["tokens"]
            * cfg.algo.ppo_epochs
            / max(t3 - t2, 1e-9),
            "lr": float(engine.get_lr()[0]),
        }
    )
    return metrics


@contextlib.contextmanager
def judge_weights(ref, cfg: TrainConfig) -> Iterator[None]:
    """While scoring: the reference engine's parameters gathered on every rank when it is the judge
    (reward.judge_model: reference; every rank scores every step, so all enter together)."""
    if cfg.reward.judge_model != "reference":
        yield
        return
    with rollout.generation_mode(ref, gather_parameters=True):
        yield


def compute_advantages(ro: rollout.RolloutGroups, tokenizer, cfg: TrainConfig) -> list[Tensor]:
    """Per rollout, float32 (R_i,) advantages of its response tokens, from the registered estimator."""
    estimator = advantages.get(cfg.algo.advantage)
    segment_ids: list[Tensor] | None = None
    if estimator.needs_segments:
        from exprl.rewards.segments import token_segment_ids

        segment_ids = [token_segment_ids(ids, tokenizer, cfg.reward.delimiter) for ids in ro.response_ids]
    extra = {"truncated": length_limited(ro, cfg)} if estimator.needs_segments else {}
    return estimator(
        ro.scores,
        cfg.rollout.group_size,
        response_lengths=[len(r) for r in ro.response_ids],
        token_segment_ids=segment_ids,
        scale=cfg.algo.scale,
        **extra,
    )


def distill_advantages(
    engine, teacher, ro: rollout.RolloutGroups, tokenizer, cfg: TrainConfig
) -> list[Tensor]:
    """On-policy self-distillation: per response token, logp_teacher - logp_student (the negated per-token
    reverse KL), with the student the policy that sampled the rollouts and the teacher the frozen base
    model whose prompt shows the reference solution (`exprl.models.teacher_problem`)."""
    from exprl.models import prompt_text, teacher_problem

    c = cfg.model.chat_template, cfg.rollout.system_prompt
    teacher_prompts = [
        torch.tensor(tokenizer(prompt_text(teacher_problem(p), tokenizer, *c))["input_ids"], dtype=torch.long)
        for p in ro.problems
    ]
    student = response_logprobs(engine, ro.prompt_ids, ro, tokenizer.pad_token_id, cfg)
    taught = response_logprobs(teacher, teacher_prompts, ro, tokenizer.pad_token_id, cfg)
    return [t - s for t, s in zip(taught, student, strict=True)]


def response_logprobs(
    model, prompt_ids: Sequence[Tensor], ro: rollout.RolloutGroups, pad_id: int, cfg: TrainConfig
) -> list[Tensor]:
    """Per rollout, float32 (R_i,) log-probs `model` gives its response tokens after `prompt_ids[i]`, at
    the rollout temperature, in micro-batches of algo.micro_batch_size (every rank runs as many)."""
    out = []
    size = cfg.algo.micro_batch_size
    with torch.no_grad():
        for start in range(0, len(ro), size):
            rows = range(start, min(start + size, len(ro)))
            batch = batching.build_rollout_batch(
                [prompt_ids[i] for i in rows],
                [ro.response_ids[i] for i in rows],
                pad_id,
                layout="padded",
                truncated=[ro.truncated[i] for i in rows],
            ).to(model.device)
            logits = model(
                input_ids=batch.input_ids,
                attention_mask=batch.attention_mask,
                position_ids=batch.position_ids,
            ).logits
            logprobs = logprobs_and_entropy(logits, batch.target_ids, temperature=cfg.rollout.temperature)[0]
            out += [logprobs[b, batch.response_mask[b]].float().cpu() for b in range(len(rows))]
    return out


def length_limited(ro: rollout.RolloutGroups, cfg: TrainConfig) -> list[bool]:
    """The rollouts the length-limit rule applies to: the truncated ones (none if reward.truncation keep)."""
    return list(ro.truncated) if cfg.reward.truncation == "zero" else [False] * len(ro)


@dataclasses.dataclass
class MicroBatch:
    """Training tensors of a few rollouts, padded (B, L); `advantages` and `mask` align with `target_ids`."""

    batch: batching.TrainingBatch
    advantages: Tensor  # float32 (B, L), 0 off the response
    mask: Tensor  # bool (B, L): response tokens of rollouts that were graded
    # float32 (B, L); with the fused linear ops (R,): only the R positions of `mask`, in (b, t) order
    old_logprobs: Tensor | None = None
    ref_logprobs: Tensor | None = None

    @property
    def tokens(self) -> int:
        return int(self.mask.sum())

    @property
    def sequences(self) -> int:
        return int((self.mask.sum(1) > 0).sum())


def micro_batches(
    ro: rollout.RolloutGroups, token_adv: Sequence[Tensor], pad_id: int, size: int, device: torch.device
) -> list[MicroBatch]:
    """Rollouts -> `size`-sequence micro-batches through `exprl.batching.build_rollout_batch`.
    Dropped rollouts (score None) keep their place with an all-zero mask."""
    out = []
    for start in range(0, len(ro), size):
        rows = range(start, min(start + size, len(ro)))
        batch = batching.build_rollout_batch(
            [ro.prompt_ids[i] for i in rows],
            [ro.response_ids[i] for i in rows],
            pad_id,
            layout="padded",
            truncated=[ro.truncated[i] for i in rows],
        )
        mask = batch.response_mask.clone()
        adv = torch.zeros(mask.shape, dtype=torch.float32)
        for b, i in enumerate(rows):
            # response_mask marks the positions that predict response tokens, in order: scatter there
            adv[b, batch.response_mask[b]] = token_adv[i]
            if ro.scores[i] is None:
                mask[b] = False
        out.append(MicroBatch(batch.to(device), adv.to(device), mask.to(device)))
    return out


def forward_logits(engine, mb: MicroBatch) -> Tensor:
    b = mb.batch
    return engine(input_ids=b.input_ids, attention_mask=b.attention_mask, position_ids=b.position_ids).logits


def policy_logprobs(engine, mb: MicroBatch, temperature: float, fused_linear: bool) -> Tensor:
    """Log-probs of the micro-batch's targets under `engine`'s model, no gradient: (B, L) from the logits,
    or with `fused_linear` (R,) at the R positions of `mb.mask`, from their hidden states and the lm_head
    (`linear_logprobs_and_entropy`: no logits at all)."""
    if not fused_linear:
        return logprobs_and_entropy(forward_logits(engine, mb), mb.batch.target_ids, temperature=temperature)[
            0
        ]
    targets = mb.batch.target_ids[mb.mask]
    return through_head(
        engine,
        mb.batch,
        mb.mask,
        lambda hidden, weight, bias: linear_logprobs_and_entropy(
            hidden, weight, targets, bias=bias, temperature=temperature
        )[0],
    )


def policy_loss(engine, mb: MicroBatch, fused_linear: bool, **options: Any) -> PGLossOutput:
    """The loss of the micro-batch under `engine`'s model (`options`: those of `entropy_pg_loss`): from the
    logits of every position (masked), or with `fused_linear` from the hidden states of the R positions of
    `mb.mask` and the lm_head (`linear_entropy_pg_loss`), whose log-probs come from `policy_logprobs`.

    The fused call sees the R tokens packed, one span per sequence that has any (`cu_seqlens`): a sequence
    with none adds nothing to any aggregation, so the loss equals the padded one.
    """
    if not fused_linear:
        return entropy_pg_loss(
            forward_logits(engine, mb),
            mb.batch.target_ids,
            mb.advantages,
            mask=mb.mask,
            old_logprobs=mb.old_logprobs,
            ref_logprobs=mb.ref_logprobs,
            **options,
        )
    lengths = mb.mask.sum(1)
    cu_seqlens = torch.nn.functional.pad(lengths[lengths > 0].cumsum(0), (1, 0))
    if len(cu_seqlens) == 1:  # no token at all: one empty sequence
        cu_seqlens = lengths.new_zeros(2)
    outputs: list[PGLossOutput] = []

    def loss(hidden: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        outputs.append(
            linear_entropy_pg_loss(
                hidden,
                weight,
                mb.batch.target_ids[mb.mask],
                mb.advantages[mb.mask],
                bias=bias,
                old_logprobs=mb.old_logprobs,
                ref_logprobs=mb.ref_logprobs,
                cu_seqlens=cu_seqlens,
                **options,
            )
        )
        return outputs[0].loss

    returned = through_head(engine, mb.batch, mb.mask, loss)
    # the loss as the model returned it: DeepSpeed's backward hooks of the lm_head hang on it
    return dataclasses.replace(outputs[0], loss=returned)


def optimize(
    engine,
    ref,
    ro: rollout.RolloutGroups,
    token_adv: Sequence[Tensor],
    pad_id: int,
    cfg: TrainConfig,
    fused_linear: bool,
    entropy_coef: float | None = None,
) -> dict[str, float]:
    """PPO epochs over the rollouts: old/ref log-probs first, then mini-batch optimizer steps with
    gradient accumulation over micro-batches. Returns global means (loss, entropy, kl, clip_frac, ...).
    fused_linear: the loss and the log-prob passes take hidden states and the lm_head, never logits.
    `entropy_coef` overrides algo.entropy_coef (the adaptive coefficient of algo.entropy_target)."""
    a, world = cfg.algo, dist.get_world_size()
    temperature = cfg.rollout.temperature
    mbs = micro_batches(ro, token_adv, pad_id, a.micro_batch_size, engine.device)
    on_policy = a.ppo_epochs == 1 and a.mini_batches == 1  # old == current policy: ratio is exactly 1
    with torch.no_grad():
        if ref is not None:
            # gathered (as for sampling, by rollout.gather_parameters), the reference runs without ZeRO-3's
            # per-module fetch hooks, a third of its forward's CPU time on the tiny model
            gathered = cfg.rollout.gather_parameters
            with rollout.generation_mode(ref, True) if gathered else contextlib.nullcontext(ref) as ref_model:
                for mb in mbs:
                    mb.ref_logprobs = policy_logprobs(ref_model, mb, temperature, fused_linear)
        if not on_policy:
            for mb in mbs:
                mb.old_logprobs = policy_logprobs(engine, mb, temperature, fused_linear)
    per_mini = len(mbs) // a.mini_batches
    sums = {"loss": 0.0, "entropy": 0.0, "kl": 0.0, "clip_frac": 0.0}
    grad_norms, updates, tokens = [], 0, 0.0
    engine.train()
    for _ in range(a.ppo_epochs):
        for m in range(a.mini_batches):
            group = mbs[m * per_mini : (m + 1) * per_mini]
            n_tokens, n_seqs = global_sum(
                [float(sum(mb.tokens for mb in group)), float(sum(mb.sequences for mb in group))]
            )
            for mb in group:
                out = policy_loss(
                    engine,
                    mb,
                    fused_linear,
                    temperature=temperature,
                    clip_low=a.clip_low,
                    clip_high=a.clip_high,
                    dual_clip=a.dual_clip,
                    kl_coef=a.kl_coef,
                    kl_estimator=a.kl_estimator,
                    entropy_coef=a.entropy_coef if entropy_coef is None else entropy_coef,
                    loss_agg=a.loss_agg,
                    norm_tokens=max(n_tokens, 1.0) if a.loss_agg == "token-mean" else None,
                    max_len=cfg.rollout.max_new_tokens if a.loss_agg == "seq-mean-token-sum-norm" else None,
                    backend=a.loss_backend,
                )
                # seq-mean modes average over this micro-batch's sequences: reweight to the global count
                share = mb.sequences / max(n_seqs, 1.0) if a.loss_agg != "token-mean" else 1.0
                loss = out.loss * share
                # DeepSpeed averages gradients over ranks (and would divide by the accumulation steps):
                # undo both so the gradient is that of the globally normalised loss
                engine.backward(loss * world, scale_wrt_gas=False)
                engine.step()
                k = mb.tokens
                sums["loss"] += float(loss.detach())
                sums["entropy"] += float(out.stats["entropy"]) * k
                sums["kl"] += float(out.stats["kl"]) * k
                sums["clip_frac"] += float(out.stats["clip_frac"]) * k
            norm = engine.get_global_grad_norm()
            grad_norms.append(float(norm) if norm is not None else float("nan"))
            updates += 1
            tokens += n_tokens
    loss, ent, kl, clip = global_sum([sums["loss"], sums["entropy"], sums["kl"], sums["clip_frac"]])
    return {
        "loss": loss / updates,
        "entropy": ent / max(tokens, 1.0),
        "kl": kl / max(tokens, 1.0),
        "clip_frac": clip / max(tokens, 1.0),
        "grad_norm": sum(grad_norms) / len(grad_norms),
        "tokens": tokens / a.ppo_epochs,
    }


def rollout_metrics(
    ro: rollout.RolloutGroups, group_size: int, state: dict[str, Any], limited: Sequence[bool] | None = None
) -> dict[str, float]:
    """Global rollout statistics; also updates the run's record of prompts that were unsolved at their
    first appearance and later solved (`state`, saved in checkpoints). `limited`: the rollouts whose
    per-segment scores count as 0 (`length_limited`; default none)."""
    limited = [False] * len(ro) if limited is None else limited
    kept = [(s, t) for s, t in zip(ro.scores, limited, strict=True) if s is not None]
    # per-segment scores of truncated rollouts are the judge's own (the estimators apply the length rule)
    judge_sum = sum(0.0 if t else float(np.mean(s)) if isinstance(s, list) else float(s) for s, t in kept)
    solved = [max(ro.correct[i : i + group_size]) > 0 for i in range(0, len(ro), group_size)]
    ids = [ro.problems[i].id for i in range(0, len(ro), group_size)]
    n, kept_n, judge_sum, correct_sum, solved_sum, length_sum, trunc_sum = global_sum(
        [
            float(len(ro)),
            float(len(kept)),
            judge_sum,
            float(sum(ro.correct)),
            float(sum(solved)),
            float(sum(len(r) for r in ro.response_ids)),
            float(sum(ro.truncated)),
        ]
    )
    everyone: list[list[tuple[str, bool]]] = [[] for _ in range(dist.get_world_size())]
    dist.all_gather_object(everyone, list(zip(ids, solved, strict=True)))
    seen_unsolved, became = set(state["unsolved_first"]), set(state["became_solved"])
    seen = set(state["seen"])
    for pid, ok in (pair for rank_pairs in everyone for pair in rank_pairs):
        if pid not in seen and not ok:
            seen_unsolved.add(pid)
        elif ok and pid in seen_unsolved:
            became.add(pid)
        seen.add(pid)
    state.update(unsolved_first=sorted(seen_unsolved), became_solved=sorted(became), seen=sorted(seen))
    prompts = n / group_size
    return {
        "reward/judge": judge_sum / max(kept_n, 1.0),
        "reward/sparse": correct_sum / n,
        "pass_rate": solved_sum / prompts,
        "response_length": length_sum / n,
        "truncation_rate": trunc_sum / n,
        "dropped_rollouts": n - kept_n,
        "prompts/unsolved_became_solved": float(len(became)),
        "prompts/unsolved_seen": float(len(seen_unsolved)),
    }


def check_dropped(
    metrics: dict[str, float], judge, cfg: TrainConfig, step: int, first: bool, warned: bool
) -> bool:
    """Make dropped rollouts visible: a first step (of this invocation) that drops every rollout stops the
    run with the judge's first failure (a wrong URL, a closed port, a reward that always hangs), and the
    first step past `reward.warn_drop_rate` prints a warning. Returns whether the warning was printed."""
    total = cfg.rollout.prompts_per_step * cfg.rollout.group_size
    dropped = metrics["dropped_rollouts"]
    if not dropped or warned:  # the first step comes before any warning
        return warned
    failures: list[str | None] = [None] * dist.get_world_size()
    dist.all_gather_object(failures, getattr(judge, "first_failure", None))
    causes = ", ".join(
        f"{key.removeprefix('dropped/')} {value:g}"
        for key, value in metrics.items()
        if key.startswith("dropped/") and value
    )
    what = (
        f"step {step + 1}: reward {cfg.reward.name!r} dropped {dropped:g} of {total} rollouts ({causes}); "
        f"first failure: {next((f for f in failures if f), 'not described by the reward')}"
    )
    if first and dropped == total:
        raise RunError(what + ". Nothing is left to train on: check reward.name and reward.options")
    if not warned and dropped / total > cfg.reward.warn_drop_rate:
        if dist.get_rank() == 0:
            print(f"warning: {what} (reward.warn_drop_rate={cfg.reward.warn_drop_rate:g})", file=sys.stderr)
        return True
    return warned
