"""The SFT baseline: next-token cross-entropy on the reference solutions, with the same ZeRO-3 engine,
checkpoints, evaluation and export as the RL trainer (`exprl sft`)."""

from __future__ import annotations

import pathlib
import time
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F

from exprl import batching
from exprl.data import Problem, load_problems, step_prompts
from exprl.kernels import logprobs_and_entropy
from exprl.models import prompt_text
from exprl.train import lifecycle
from exprl.train.config import TrainConfig
from exprl.train.engine import (
    build_engine,
    deepspeed_config,
    global_sum,
    init_distributed,
    load_policy,
    seed_everything,
)
from exprl.train.rollout import fit_context


def sft_layout(cfg: TrainConfig, world: int) -> tuple[int, int]:
    """(sequences per rank per optimizer step, gradient accumulation steps); ValueError if uneven."""
    s = cfg.sft
    if s.batch_size % (world * s.micro_batch_size):
        raise ValueError(
            f"sft.batch_size={s.batch_size} must be a multiple of world size x sft.micro_batch_size "
            f"= {world * s.micro_batch_size}"
        )
    per_rank = s.batch_size // world
    return per_rank, per_rank // s.micro_batch_size


def sft_examples(
    problems: list[Problem], tokenizer, cfg: TrainConfig
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(prompt_ids, target_ids) per problem: the policy prompt and the reference solution + eos."""
    missing = [p.id for p in problems if not p.reference]
    if missing:
        raise ValueError(
            f"data.train: SFT needs a reference solution for every problem; {len(missing)} have none "
            f"(first: {missing[0]})"
        )
    out = []
    for p in problems:
        prompt = torch.tensor(
            tokenizer(prompt_text(p, tokenizer, cfg.model.chat_template, cfg.rollout.system_prompt))[
                "input_ids"
            ]
        )
        answer = tokenizer(p.reference, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        out.append((prompt.long(), torch.tensor(answer, dtype=torch.long)))
    return out


def sft_loss_step(
    engine, examples: list[tuple[torch.Tensor, torch.Tensor]], pad_id: int, micro: int
) -> dict[str, float]:
    """One optimizer step over this rank's `examples`: token-mean cross-entropy normalised by the global
    token count (all ranks, all micro-batches).

    Returns global figures: `loss`; `tokens`, the loss (reference + eos) tokens summed over ranks; and
    `entropy`, the policy's mean token entropy on those tokens (fp32, before this step's update), the
    same quantities the RL loop logs so that the methods compare like with like."""
    world = dist.get_world_size()
    batches = [
        batching.build_rollout_batch(
            [e[0] for e in examples[i : i + micro]], [e[1] for e in examples[i : i + micro]], pad_id
        ).to(engine.device)
        for i in range(0, len(examples), micro)
    ]
    (n_tokens,) = global_sum([float(sum(int(b.response_mask.sum()) for b in batches))])
    total, entropy_sum = 0.0, 0.0
    for b in batches:
        logits = engine(
            input_ids=b.input_ids, attention_mask=b.attention_mask, position_ids=b.position_ids
        ).logits
        loss = F.cross_entropy(
            logits.flatten(0, 1).float(), b.target_ids.flatten(), ignore_index=-100, reduction="sum"
        ) / max(n_tokens, 1.0)
        # no autograd, one fused pass over the logits already in memory
        _, entropy = logprobs_and_entropy(logits.detach(), b.target_ids)
        entropy_sum += float(entropy[b.response_mask].sum())
        engine.backward(loss * world, scale_wrt_gas=False)  # undo DeepSpeed's rank and accumulation averaging
        engine.step()
        total += float(loss.detach())
    loss_sum, entropy_sum = global_sum([total, entropy_sum])
    return {"loss": loss_sum, "tokens": n_tokens, "entropy": entropy_sum / max(n_tokens, 1.0)}


def run_sft(cfg: TrainConfig) -> pathlib.Path:
    """Supervised fine-tuning on the `cfg.data.train` references for `cfg.steps` optimizer steps of
    `cfg.sft.batch_size` examples (epochs follow each other in seeded orders); returns the run dir."""
    rank, world = init_distributed()
    seed_everything(cfg.seed)
    per_rank, grad_accum = sft_layout(cfg, world)
    model, tokenizer = load_policy(cfg)
    problems = load_problems(cfg.data.train, seed=cfg.seed)
    problems = fit_context(problems, tokenizer, model.config, cfg, announce=rank == 0, with_reference=True)
    examples = sft_examples(problems, tokenizer, cfg)
    if len(examples) < cfg.sft.batch_size:
        raise ValueError(
            f"data.train: {len(examples)} examples, fewer than sft.batch_size={cfg.sft.batch_size}"
        )
    engine = build_engine(model, deepspeed_config(cfg, cfg.sft.micro_batch_size, grad_accum, world))

    state: dict[str, Any] = {"step": 0, "eval_before": None}
    state, logger, bar, saved = lifecycle.begin_run(engine, tokenizer, cfg, rank, state)
    engine.train()
    for step in range(state["step"], cfg.steps):
        # the same seeded epoch permutation as the RL loop: the data position is the step
        indices = step_prompts(len(examples), cfg.sft.batch_size, step, cfg.seed, cfg.data.shuffle)
        mine = indices[rank * per_rank : (rank + 1) * per_rank]
        t0 = time.perf_counter()
        stats = sft_loss_step(
            engine, [examples[i] for i in mine], tokenizer.pad_token_id, cfg.sft.micro_batch_size
        )
        elapsed = time.perf_counter() - t0
        norm = engine.get_global_grad_norm()
        metrics = {
            **stats,
            "grad_norm": float(norm) if norm is not None else float("nan"),
            "lr": float(engine.get_lr()[0]),
            "epoch": (step + 1) * cfg.sft.batch_size / len(examples),
            "time/training": elapsed,
            # loss tokens per second, as the RL loop counts them (prompt tokens are read, not trained)
            "throughput/trained_tokens_per_s": stats["tokens"] / max(elapsed, 1e-9),
        }
        saved = lifecycle.end_step(engine, cfg, state, metrics, logger, bar)
    lifecycle.end_run(engine, tokenizer, cfg, state, logger, bar, saved, rank)
    return cfg.run_dir
