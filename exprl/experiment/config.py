"""The experiment's configuration: a YAML file read into dataclasses by the trainer's config machinery
(`exprl.train.config.from_mapping`: unknown or missing keys and wrong types name the key and the file),
then checked for what types alone do not say."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from exprl.eval.settings import EvalSettings, check_eval_settings
from exprl.models import TINY
from exprl.train.config import from_mapping, read_yaml

NO_STAGE1 = "none"  # method name meaning "no Stage I": Stage II starts from the base model


@dataclass
class StageSettings:
    """One trainer configuration: a trainer YAML file plus `key=value` overrides.

    kind "train" runs the trainer on the config; "rft" (Stage I only, an SFT config) first samples
    the model on the problems an RL run would draw and fine-tunes it on its own verified completions
    (`exprl.experiment.rft`); on-policy self-distillation is a trainer config
    (method: distill). Relative config paths are found next to the experiment file, else
    in the working directory."""

    config: Path | None = None  # None only for the "none" method
    overrides: list[str] = field(default_factory=list)
    kind: Literal["train", "rft"] = "train"


@dataclass
class ReportSettings:
    reward_metric: str = "reward/sparse"  # metrics.jsonl keys plotted over training
    entropy_metric: str = "entropy"
    # Compute-table columns: label -> metric expressions ("name" or "a*b", a per-step product), the first
    # one a run logged is summed over its steps (a fallback serves runs that log a count differently).
    token_counts: dict[str, list[str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # printed under the compute table (what the counts mean)


@dataclass
class ExperimentConfig:
    name: str
    out_dir: Path  # the report: report.md, results.json, plots/, evals/ (small; meant to be kept)
    steps: int  # optimizer steps per stage, the same for every method
    stage1: dict[str, StageSettings]  # method name -> its Stage I trainer, in report order
    stage2: StageSettings
    eval: EvalSettings  # every model is evaluated with these settings
    base_model: str = TINY  # "tiny" = the shipped tiny model, else a Hugging Face model directory
    seed: int = 0
    # training seeds seed, seed + 1, ...: every method's two stages run once per seed; the report gives
    # means with 95% bootstrap intervals over seeds and problems (exprl.experiment.intervals)
    num_seeds: int = 1
    overrides: list[str] = field(default_factory=list)  # applied to every stage of every method
    work_dir: Path | None = None  # trainer runs (checkpoints, exports); default runs/experiment/<name>
    # How prompts are shown to every model in evaluation, as the trainer's model.chat_template
    chat_template: Literal["auto", "never"] = "auto"
    report: ReportSettings = field(default_factory=ReportSettings)
    source: str = field(default="<dict>", init=False)  # the experiment file, for the report


def worker_threads(jobs: int) -> int:
    """Torch threads per process when `exprl experiment --jobs` splits this machine's cores `jobs` ways."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // jobs)


def parse_config(data: Any, source: str = "<dict>", base_dir: Path | None = None) -> ExperimentConfig:
    """Build and validate an experiment config from a mapping (as read from YAML); errors name the key and
    `source`. Relative stage config paths are looked up in `base_dir`, then in the working directory."""
    if not isinstance(data, dict):
        raise ValueError(f"{source}: the top level must be a mapping of keys, got {type(data).__name__}")
    cfg = from_mapping(ExperimentConfig, data, source)
    cfg.source = source
    validate(cfg, source, base_dir or Path("."))
    return cfg


def load_experiment_config(path: str | Path) -> ExperimentConfig:
    """Read and validate an experiment YAML file."""
    return parse_config(read_yaml(path), source=str(path), base_dir=Path(path).parent)


def validate(cfg: ExperimentConfig, source: str, base_dir: Path) -> None:
    """Range and consistency checks, and stage config paths resolved; errors name the key and `source`."""

    def fail(key: str, why: str) -> None:
        raise ValueError(f"{source}: {key}: {why}")

    if cfg.steps < 1:
        fail("steps", f"must be >= 1, got {cfg.steps}")
    if cfg.num_seeds < 1:
        fail("num_seeds", f"must be >= 1, got {cfg.num_seeds}")
    if not cfg.stage1:
        fail("stage1", "name at least one method")
    for method, settings in cfg.stage1.items():
        if not method or "/" in method:
            fail("stage1", f"method names must be non-empty and without '/', got {method!r}")
        key = f"stage1.{method}"
        if method == NO_STAGE1:
            if settings.config is not None or settings.kind != "train":
                fail(key, f"{NO_STAGE1!r} means no Stage I: it takes no config and no kind")
            continue
        _resolve_config(settings, key, base_dir, fail)
    if cfg.stage2.kind != "train":
        fail("stage2.kind", f"Stage II is sparse-reward RL: only 'train', got {cfg.stage2.kind!r}")
    _resolve_config(cfg.stage2, "stage2", base_dir, fail)
    check_eval_settings(cfg.eval, lambda key, why: fail(f"eval.{key}", why))
    for label, expressions in cfg.report.token_counts.items():
        if not expressions or not all(expressions):
            fail(f"report.token_counts.{label}", "list at least one non-empty metric expression")


def _resolve_config(settings: StageSettings, key: str, base_dir: Path, fail) -> None:
    if settings.config is None:
        fail(f"{key}.config", "missing: name the trainer config file of this stage")
    for candidate in (base_dir / settings.config, settings.config):
        if candidate.is_file():
            settings.config = candidate.resolve()
            return
    fail(f"{key}.config", f"file {str(settings.config)!r} not found (looked in {base_dir} and .)")
