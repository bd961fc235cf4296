"""`exprl experiment --config F`: run or resume the comparison of docs/design.md §1."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from exprl.experiment.config import load_experiment_config
from exprl.experiment.driver import run_experiment
from exprl.experiment.stages import make_evaluator


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="exprl experiment",
        description="Stage I methods x Stage II sparse GRPO from one base model, evaluated with pass@k. "
        "Rerunning the same command resumes where it stopped.",
    )
    parser.add_argument("--config", required=True, help="experiment YAML, e.g. configs/experiment_tiny.yaml")
    parser.add_argument("--out", default=None, help="report directory (overrides out_dir of the config)")
    parser.add_argument("--work-dir", default=None, help="trainer runs directory (overrides work_dir)")
    parser.add_argument("--no-progress", action="store_true", help="hide the evaluation progress bars")
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="run the (seed, method) chains in this many processes, the CPU cores split between them "
        "(default 1: one after another)",
    )
    args = parser.parse_args(argv)
    try:
        cfg = load_experiment_config(args.config)
    except (ValueError, TypeError, FileNotFoundError) as e:
        print(f"exprl experiment: {e}", file=sys.stderr)
        return 2
    if args.out:
        cfg.out_dir = Path(args.out)
    if args.work_dir:
        cfg.work_dir = Path(args.work_dir)
    if args.jobs < 1:
        print(f"exprl experiment: --jobs must be >= 1, got {args.jobs}", file=sys.stderr)
        return 2
    progress = not args.no_progress and args.jobs == 1  # bars of several processes would interleave
    run_experiment(
        cfg, evaluator=make_evaluator(cfg.eval, cfg.chat_template, progress=progress), jobs=args.jobs
    )
    return 0
