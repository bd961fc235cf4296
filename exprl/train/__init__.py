"""The ExpRL trainer on DeepSpeed ZeRO-3: `run(load_config(path, overrides))`."""

from __future__ import annotations

import pathlib

from exprl.train.config import TrainConfig, load_config

__all__ = ["TrainConfig", "load_config", "run"]


def run(config: TrainConfig) -> pathlib.Path:
    """Train by `config` (RL or on-policy self-distillation, or SFT when `config.method == "sft"`) and
    return the run directory (runs/<name>/). The run holds its directory's lock (`exprl.train.lock`)
    throughout: a second run on the same name fails at once."""
    from exprl.train.engine import init_distributed
    from exprl.train.lock import hold_run_lock

    init_distributed()
    with hold_run_lock(config.run_dir):
        if config.method == "sft":
            from exprl.train.sft import run_sft

            return run_sft(config)
        from exprl.train.loop import run_rl

        return run_rl(config)
