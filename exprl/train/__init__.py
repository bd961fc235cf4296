"""The ExpRL trainer on DeepSpeed ZeRO-3: `run(load_config(path, overrides))`."""

from __future__ import annotations

import pathlib

from exprl.train.config import TrainConfig, load_config

__all__ = ["TrainConfig", "load_config", "run"]


def run(config: TrainConfig) -> pathlib.Path:
    """Train by `config` and return the run directory (runs/<name>/)."""
    from exprl.train.loop import run as _run

    return _run(config)
