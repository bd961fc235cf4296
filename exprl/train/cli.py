"""Command lines: `exprl train`, `exprl sft`, and `python -m exprl.train` (what `deepspeed` launches)."""

from __future__ import annotations

import argparse
import logging
import warnings

from exprl.train.config import load_config


def _parser(prog: str, description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument(
        "--config",
        default=None,
        help="YAML config (default: the embedded default, ExpRL-Outcome on the tiny model)",
    )
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument(
        "overrides", nargs="*", metavar="key=value", help="config overrides, e.g. rollout.group_size=4"
    )
    return p


def quiet_libraries() -> None:
    """Keep the terminal for the progress bar and the results: DeepSpeed's info logs and torch's
    deprecation notices about collectives DeepSpeed calls say nothing to a user."""
    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.distributed")
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.jit")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def main(argv: list[str] | None = None) -> int:
    """`exprl train [--config F] [key=value ...]`: ExpRL (or sparse GRPO / SFT, by config)."""
    args = _parser("exprl train", "Train a policy with ExpRL on DeepSpeed ZeRO-3.").parse_args(argv)
    quiet_libraries()
    from exprl.train import run

    run(load_config(args.config, args.overrides))
    return 0


def sft_main(argv: list[str] | None = None) -> int:
    """`exprl sft [--config F] [key=value ...]`: the SFT baseline on the reference solutions."""
    args = _parser(
        "exprl sft", "Supervised fine-tuning on the reference solutions (the baseline)."
    ).parse_args(argv)
    quiet_libraries()
    from exprl.train import run

    run(load_config(args.config, [*args.overrides, "method=sft"]))
    return 0
