"""Stage runners: what trains one method's stage (the trainer, or RFT sampling then the trainer), and
the evaluator that scores every model with the experiment's settings. `run_experiment` takes any callables
of the same shape (tests inject fakes)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from exprl.data import load_problems, step_prompts
from exprl.eval import EvalReport, EvalSettings, evaluate_model_dir
from exprl.experiment.config import StageSettings
from exprl.experiment.rft import collect_correct_samples, write_records
from exprl.models import load_model_and_tokenizer, prompt_text
from exprl.train import run
from exprl.train.config import load_config


@dataclass
class StageSpec:
    """What a stage runner must do: train `method`'s stage `stage` from `init_model` into `run_dir`."""

    method: str
    stage: int  # 1 or 2
    init_model: Path
    run_dir: Path
    settings: StageSettings
    steps: int
    seed: int
    overrides: list[str]  # experiment-wide overrides, applied before the stage's own


@dataclass
class StageResult:
    model_dir: Path  # Hugging Face export of the trained policy
    metrics_path: Path | None  # the run's metrics.jsonl
    extra: dict[str, Any] = field(default_factory=dict)  # work outside the trainer's metrics, for the report


StageRunner = Callable[[StageSpec], StageResult]
Evaluator = Callable[[Path], EvalReport]


def _trainer_config(spec: StageSpec, *extra: str):
    """The stage's TrainConfig: its file, the experiment-wide overrides, its own, then what the experiment
    fixes (init model, run directory, steps, seed, export on, the trainer's own evaluation off)."""
    if spec.settings.config is None:
        raise ValueError(f"stage{spec.stage}.{spec.method}: no trainer config")
    overrides = [
        *spec.overrides,
        *spec.settings.overrides,
        f"model.path={spec.init_model}",
        f"output_dir={spec.run_dir.parent}",
        f"name={spec.run_dir.name}",
        f"steps={spec.steps}",
        f"seed={spec.seed}",
        "export=true",
        "eval.enabled=false",  # the experiment evaluates every model itself, with one shared setting
        *extra,
    ]
    return load_config(spec.settings.config, overrides)


def train_stage(spec: StageSpec) -> StageResult:
    """The real stage runner: `exprl.train.run` on the stage's config (or RFT, by kind)."""
    if spec.settings.kind == "rft":
        return rft_stage(spec)
    run_dir = Path(run(_trainer_config(spec)))
    return StageResult(model_dir=run_dir / "export", metrics_path=run_dir / "metrics.jsonl")


def rft_stage(spec: StageSpec) -> StageResult:
    """Sample `rollout.group_size` completions of each problem the RL methods draw in `steps` steps of
    `rollout.prompts_per_step` prompts, keep the verified ones, then SFT on them for `steps` steps."""
    cfg = _trainer_config(spec)
    if cfg.method != "sft":
        raise ValueError(f"stage1.{spec.method}: RFT needs an SFT trainer config (method: sft)")
    problems = load_problems(cfg.data.train, seed=cfg.seed)
    r = cfg.rollout
    drawn = [
        problems[i]
        for step in range(cfg.steps)
        for i in step_prompts(len(problems), r.prompts_per_step, step, cfg.seed, cfg.data.shuffle)
    ]
    model, tokenizer = load_model_and_tokenizer(spec.init_model)
    data = collect_correct_samples(
        model,
        tokenizer,
        drawn,
        group_size=r.group_size,
        max_new_tokens=r.max_new_tokens,
        temperature=r.temperature,
        seed=cfg.seed,
        verifier=cfg.reward.sparse,
        batch_size=max(cfg.sft.batch_size, r.group_size),
        format_prompt=lambda p: prompt_text(p, tokenizer, cfg.model.chat_template, cfg.rollout.system_prompt),
    )
    extra = {
        "samples": data.samples,
        "sampled tokens": data.sampled_tokens,
        "kept": len(data.records),
        "problems solved": data.problems_solved,
        "problems drawn": len(drawn),
        "sampling s": round(data.seconds, 1),
    }
    if not data.records:
        # Nothing to imitate: the honest outcome is the unchanged model (the report shows 0 steps logged).
        extra["note"] = "no verified completion: no update"
        return StageResult(model_dir=spec.init_model, metrics_path=None, extra=extra)
    spec.run_dir.mkdir(parents=True, exist_ok=True)
    path = spec.run_dir / "rft.jsonl"
    extra["records written"] = write_records(data.records, path, min_records=cfg.sft.batch_size)
    run_dir = Path(run(_trainer_config(spec, f"data.train={path.resolve()}")))
    return StageResult(model_dir=run_dir / "export", metrics_path=run_dir / "metrics.jsonl", extra=extra)


def make_evaluator(settings: EvalSettings, chat_template: str = "auto", progress: bool = True) -> Evaluator:
    """An evaluator that loads a model directory and evaluates it with the experiment's settings (a
    partial of a module-level function, so that it pickles into `exprl experiment --jobs` workers)."""
    return partial(evaluate_model_dir, settings=settings, chat_template=chat_template, progress=progress)
