"""A run's lifecycle: start or resume from the latest checkpoint, close each step (log, progress bar,
periodic checkpoint), and finish (before/after evaluation, the final table, plots, the HF export)."""

from __future__ import annotations

import json
import pathlib
import shutil
import sys
from typing import Any

import torch
import torch.distributed as dist

from exprl.errors import RunError
from exprl.train.config import TrainConfig
from exprl.train.metrics import MetricsLogger

POSTFIX_KEYS = {"reward/judge": "reward", "pass_rate": "pass", "entropy": "ent", "kl": "kl", "loss": "loss",
                "time/generation": "gen_s", "throughput/generated_tokens_per_s": "tok/s",
                "rollout/wasted_decode_share": "wasted"}  # fmt: skip


def make_logger(run_dir: pathlib.Path, rank: int) -> MetricsLogger:
    return MetricsLogger(run_dir, enabled=rank == 0)


def progress(cfg: TrainConfig, start: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=cfg.steps, initial=start, desc=cfg.name, disable=not enabled, dynamic_ncols=True)


def begin_run(engine, tokenizer, cfg: TrainConfig, rank: int, state: dict[str, Any]):
    """Start or resume a run: load the newest intact checkpoint (`resume: auto`) over the fresh `state`,
    with the changes `cfg` makes to the config it ran with (only CHANGEABLE keys; recorded in
    config_changes.jsonl from the resumed step on), write config.yaml, drop metrics logged after that
    checkpoint, evaluate the policy before training once. `resume: never` refuses a directory that holds
    a run unless `overwrite` is set, which empties it first.

    Returns (state, logger, progress bar, whether `state` is the latest saved checkpoint).
    """
    from exprl.train import checkpoint
    from exprl.train.config import changes_on_resume, save_config, to_dict
    from exprl.train.engine import apply_lr

    run_dir, ckpt_dir = cfg.run_dir, cfg.run_dir / "checkpoints"
    if cfg.resume == "never":
        start_over(run_dir, cfg.overwrite, rank)
    tag = resume_point(ckpt_dir, rank) if cfg.resume == "auto" else None
    changes: dict[str, list[Any]] = {}
    if tag is not None:
        ran_with = checkpoint.trainer_state(ckpt_dir, tag).get("config", {})
        changes = changes_on_resume(ran_with, cfg, str(ckpt_dir / tag))
        had_schedule = ran_with.get("optim", {}).get("warmup_steps", 0) > 0
        state = checkpoint.load(
            engine, ckpt_dir, tag, load_scheduler=had_schedule and cfg.optim.warmup_steps > 0
        )
        apply_lr(engine, cfg)
    state["config"] = to_dict(cfg)
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
        truncate_metrics(run_dir / "metrics.jsonl", after_step=state["step"])
        if changes:
            with (run_dir / "config_changes.jsonl").open("a") as f:
                f.write(json.dumps({"from_step": state["step"] + 1, "changes": changes}) + "\n")
    if cfg.eval.enabled and state["eval_before"] is None:
        state["eval_before"] = evaluate_policy(engine, tokenizer, cfg, stage="before")
    logger = make_logger(run_dir, rank)
    bar = progress(cfg, start=state["step"], enabled=rank == 0 and cfg.progress)
    return state, logger, bar, tag is not None


def start_over(run_dir: pathlib.Path, overwrite: bool, rank: int) -> None:
    """For `resume: never`: a run directory that holds a run is emptied when `overwrite`, else RunError."""
    from exprl.train.lock import LOCK_FILE

    held = sorted(p.name for p in run_dir.iterdir() if p.name != LOCK_FILE) if run_dir.is_dir() else []
    if held and not overwrite:
        raise RunError(
            f"{run_dir} holds a run ({', '.join(held)}); resume=never would train over it: give this run "
            "another name=, or add overwrite=true to replace it"
        )
    if held and rank == 0:
        for name in held:
            path = run_dir / name
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
    if dist.get_world_size() > 1:
        dist.barrier()


def resume_point(ckpt_dir: pathlib.Path, rank: int) -> str | None:
    """The checkpoint to resume from, chosen on rank 0 for all ranks: the newest intact one, saying which
    newer ones were passed over and why; None when the run has none. RunError naming the directory when
    checkpoints exist but none is intact: training from step 0 would overwrite them."""
    from exprl.train import checkpoint

    choice: list[Any] = [checkpoint.newest_intact(ckpt_dir) if rank == 0 else None]
    if dist.get_world_size() > 1:
        dist.broadcast_object_list(choice, src=0)
    tag, passed_over = choice[0]
    if tag is None and passed_over:
        raise RunError(
            f"{ckpt_dir}: no intact checkpoint to resume from ({'; '.join(passed_over)}); move the run "
            "directory away, or start over with resume=never overwrite=true"
        )
    if passed_over and rank == 0:
        print(f"resume: {'; '.join(passed_over)}; resuming from {tag} instead", file=sys.stderr, flush=True)
    return tag


def end_step(engine, cfg: TrainConfig, state: dict[str, Any], metrics: dict[str, float], logger, bar) -> bool:
    """Close step `state["step"]`: log its metrics, advance the bar and the state, checkpoint every
    `checkpoint_every` steps. Returns whether it saved a checkpoint."""
    from exprl.train import checkpoint

    state["step"] += 1
    logger.log(state["step"], metrics)
    bar.update(1)
    bar.set_postfix(postfix(metrics), refresh=False)
    if cfg.checkpoint_every and state["step"] % cfg.checkpoint_every == 0:
        checkpoint.save(engine, cfg.run_dir / "checkpoints", state["step"], state)
        return True
    return False


def end_run(engine, tokenizer, cfg: TrainConfig, state: dict[str, Any], logger, bar, saved: bool, rank: int):
    """Checkpoint the last step unless it was just saved, then evaluate, export and print the table."""
    from exprl.train import checkpoint

    bar.close()
    if not saved:
        checkpoint.save(engine, cfg.run_dir / "checkpoints", state["step"], state)
    finish(engine, tokenizer, cfg, state, logger, rank)


def postfix(metrics: dict[str, float]) -> dict[str, str]:
    """The live figures of the progress bar; when rollouts were dropped, how many and why."""
    shown = {short: f"{metrics[key]:.3g}" for key, short in POSTFIX_KEYS.items() if key in metrics}
    if metrics.get("dropped_rollouts"):
        shown["drop"] = f"{metrics['dropped_rollouts']:g}"
        shown.update(
            {
                k.removeprefix("dropped/"): f"{v:g}"
                for k, v in metrics.items()
                if k.startswith("dropped/") and v
            }
        )
    return shown


def truncate_metrics(path: pathlib.Path, after_step: int) -> None:
    """Drop records logged after `after_step` (a killed run logs steps its last checkpoint does not hold;
    the resumed run logs them again)."""
    if not path.is_file():
        return
    lines = [
        ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= after_step
    ]
    path.write_text("".join(ln + "\n" for ln in lines))


def evaluate_policy(engine, tokenizer, cfg: TrainConfig, stage: str) -> dict[str, Any]:
    """pass@k of the current policy by `cfg.eval` (rank 0 samples with the parameters gathered;
    the other ranks wait). Returns the report as a dict (`EvalReport.to_dict()`), the same on all ranks,
    and writes runs/<name>/eval_<stage>.json."""
    from exprl.eval import evaluate_with
    from exprl.models import prompt_text
    from exprl.train.rollout import generation_mode

    result: list[Any] = [None]
    with generation_mode(engine, gather_parameters=True) as model:
        if dist.get_rank() == 0:
            report = evaluate_with(
                model,
                tokenizer,
                cfg.eval,
                format_prompt=lambda p: prompt_text(
                    p, tokenizer, cfg.model.chat_template, cfg.rollout.system_prompt
                ),
                progress=False,
            )
            result[0] = report.to_dict()
            cfg.run_dir.mkdir(parents=True, exist_ok=True)
            (cfg.run_dir / f"eval_{stage}.json").write_text(json.dumps(result[0], indent=2))
    dist.broadcast_object_list(result, src=0)
    return result[0]


def comparison_table(before: dict[str, Any], after: dict[str, Any]) -> str:
    """Markdown: one row per split and k, pass@k before and after training (from `EvalReport.to_dict()`)."""
    rows = ["| split | metric | before | after | change |", "|---|---|---:|---:|---:|"]
    for split, metrics in after["splits"].items():
        old = before["splits"].get(split)
        for k, value in metrics["pass_at_k"].items():
            prev = old["pass_at_k"][k] if old else float("nan")
            rows.append(f"| {split} | pass@{k} | {prev:.3f} | {value:.3f} | {value - prev:+.3f} |")
        if old:
            rows.append(
                f"| {split} | never solved | {old['never_solved']:.3f} | {metrics['never_solved']:.3f} | "
                f"{metrics['never_solved'] - old['never_solved']:+.3f} |"
            )
    return "\n".join(rows)


def export_policy(engine, tokenizer, out_dir: pathlib.Path) -> None:
    """Hugging Face export of the policy: the ZeRO-3 shards gathered into full weights in the training
    dtype (16-bit on GPUs, fp32 on CPU), plus config, generation config and tokenizer. Collective."""
    from deepspeed import zero

    module = engine.module
    with zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
        if dist.get_rank() == 0:
            state = {k: v.detach().clone() for k, v in module.state_dict().items()}
            out_dir.mkdir(parents=True, exist_ok=True)
            module.save_pretrained(out_dir, state_dict=state, safe_serialization=True)
            tokenizer.save_pretrained(out_dir)
    dist.barrier()


def finish(
    engine, tokenizer, cfg: TrainConfig, state: dict[str, Any], logger: MetricsLogger, rank: int
) -> None:
    """After the last step: evaluate, export, plot, and print where everything is."""
    table = None
    if cfg.eval.enabled:
        after = evaluate_policy(engine, tokenizer, cfg, stage="after")
        table = comparison_table(state["eval_before"], after)
    if cfg.export:
        export_policy(engine, tokenizer, cfg.run_dir / "export")
    if rank == 0:
        logger.plot()
        logger.close()
        lines = [f"\nrun directory: {cfg.run_dir}"]
        if table is not None:
            (cfg.run_dir / "summary.md").write_text(table + "\n")
            lines = ["", table, *lines]
        lines.append("  metrics.jsonl, tb/, plots/*.png, checkpoints/" + (", export/" if cfg.export else ""))
        print("\n".join(lines), flush=True)
    if torch.distributed.is_initialized():
        dist.barrier()
