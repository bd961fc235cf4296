"""`exprl experiment`: the comparison of docs/design.md §1 end to end, resumable, with a report directory.

From one base model, every Stage I method (SFT on references, sparse GRPO, ExpRL-Outcome, ExpRL-Process,
on-policy self-distillation, RFT, or "none" = the base model itself) is trained with the same number of
optimizer steps and the same seed; then Stage II (sparse GRPO, same budget) starts from each Stage I
result. Every resulting model is evaluated with the same settings (`exprl.eval.EvalSettings`). The report
directory holds:

    report.md              tables: pass@1 / pass@k per split after Stage I and after Stage II, never-solved
                           share, problems the base model never solved that each method solves, compute
    results.json           every number in the tables, the training curves, settings, machine, seeds
    plots/*.png            pass@k curves per stage and split; reward and entropy over training per method
    evals/<method>-stage<s>.json   each model's EvalReport (base.json for the base model)

and the work directory (`work_dir`, default runs/experiment/<name>) holds <method>/stage<s>/: the trainer's
run directory (checkpoints, metrics, the exported model) and DONE.json once that stage has finished.
With `num_seeds` > 1 every seed's stages and evaluations go under seed<k>/ in both directories (the base
model is evaluated once); the tables and plots show the first seed, and a table of means with 95% bootstrap
intervals over seeds and problems covers all of them.

A finished stage (DONE.json) and a finished evaluation (its JSON) are not redone, so rerunning the same
command after an interruption continues where it stopped (an interrupted trainer run resumes from its
last checkpoint). A stage whose starting model was trained again is redone, and so is the evaluation of
a model trained again; a finished part whose settings differ from the config is an error, never reused.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from exprl.eval import EvalSettings
from exprl.experiment.config import NO_STAGE1, ExperimentConfig, StageSettings
from exprl.experiment.report import write_json, write_report
from exprl.experiment.stages import Evaluator, StageRunner, StageSpec, make_evaluator, train_stage
from exprl.models import resolve_model_path


def _check_resumable(path: Path, done: dict[str, Any], expected: dict[str, Any]) -> None:
    changed = sorted(k for k, v in expected.items() if done.get(k) != v)
    if changed:
        raise ValueError(
            f"{path}: finished with different {', '.join(changed)} than the current config "
            f"(was {[done.get(k) for k in changed]}, now {[expected[k] for k in changed]}); "
            "delete it to redo that part, or choose another out_dir / work_dir"
        )


def _run_stage(
    runner: StageRunner, spec: StageSpec, log: Callable[[str], None], init_finished_at: float | None
) -> dict[str, Any]:
    marker = spec.run_dir / "DONE.json"
    expected = {
        "init_model": str(spec.init_model),
        "init_finished_at": init_finished_at,  # a Stage I that was trained again invalidates its Stage II
        "steps": spec.steps,
        "seed": spec.seed,
        "config": str(spec.settings.config),
        "kind": spec.settings.kind,
        "overrides": [*spec.overrides, *spec.settings.overrides],
    }
    if marker.is_file():
        done = json.loads(marker.read_text())
        _check_resumable(marker, done, {k: v for k, v in expected.items() if k != "init_finished_at"})
        if done.get("init_finished_at") == init_finished_at:
            log(f"[skip] {spec.method} stage {spec.stage}: done ({marker})")
            return done
        # Its starting model was trained again: the old run (and its checkpoints) must not be resumed.
        log(f"[redo] {spec.method} stage {spec.stage}: its starting model was trained again")
        shutil.rmtree(spec.run_dir)
    log(f"[run ] {spec.method} stage {spec.stage}: {spec.steps} steps from {spec.init_model}")
    spec.run_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    result = runner(spec)
    done = {
        "method": spec.method,
        "stage": spec.stage,
        "model_dir": str(result.model_dir),
        "metrics_path": str(result.metrics_path) if result.metrics_path else None,
        "extra": result.extra,
        **expected,
        "wall_s": time.perf_counter() - start,
        "finished_at": time.time(),  # identifies this model: evals and Stage II of an older one are redone
    }
    write_json(marker, done)
    return done


def _evaluate_once(
    evaluator: Evaluator,
    settings: EvalSettings,
    model_dir: Path,
    out: Path,
    log: Callable[[str], None],
    model_finished_at: float | None = None,
) -> dict[str, Any]:
    expected = {**asdict(settings), "model": str(model_dir)}
    if out.is_file():
        data = json.loads(out.read_text())
        _check_resumable(out, data["settings"], expected)
        if data["settings"].get("model_finished_at") == model_finished_at:
            log(f"[skip] eval {out.stem}: done")
            return data
        log(f"[redo] eval {out.stem}: the model was trained again since")
    log(f"[eval] {out.stem}: {model_dir}")
    data = evaluator(model_dir).to_dict()
    data["settings"].update(expected, model_finished_at=model_finished_at)
    write_json(out, data)
    return data


def run_experiment(
    cfg: ExperimentConfig,
    *,
    stage_runner: StageRunner | None = None,
    evaluator: Evaluator | None = None,
    log: Callable[[str], None] = print,
) -> Path:
    """Run (or resume) the whole comparison; returns the report directory `cfg.out_dir`.

    `stage_runner` and `evaluator` default to the real trainer (`exprl.train.run`) and `exprl.eval.evaluate`.
    Order: base evaluation, every Stage I, their evaluations, then Stage II and its evaluation per method.
    """
    stage_runner = stage_runner or train_stage
    evaluator = evaluator or make_evaluator(cfg.eval, cfg.chat_template)
    out = cfg.out_dir
    work = cfg.work_dir or Path("runs") / "experiment" / cfg.name
    (out / "evals").mkdir(parents=True, exist_ok=True)
    base = resolve_model_path(cfg.base_model, key="base_model")

    def evaluate_stage(name: str, done: dict[str, Any], sub: str = "") -> dict[str, Any]:
        path = out / "evals" / sub / f"{name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        return _evaluate_once(
            evaluator, cfg.eval, Path(done["model_dir"]), path, log, done.get("finished_at")
        )

    base_done = {"method": "base", "model_dir": str(base), "steps": 0, "wall_s": 0.0}
    base_eval = evaluate_stage("base", base_done)

    def one_seed(seed: int, sub: str) -> tuple[dict[str, Any], dict[str, dict[int, dict[str, Any]]]]:
        def stage(method: str, number: int, init: dict[str, Any], settings: StageSettings) -> dict[str, Any]:
            run_dir = work / sub / method / f"stage{number}"
            spec = StageSpec(
                method, number, Path(init["model_dir"]), run_dir, settings, cfg.steps, seed, cfg.overrides
            )
            return _run_stage(stage_runner, spec, log, init_finished_at=init.get("finished_at"))

        evals = {"base": base_eval}
        stages: dict[str, dict[int, dict[str, Any]]] = {}
        for method, settings in cfg.stage1.items():
            stages[method] = {1: base_done if method == NO_STAGE1 else stage(method, 1, base_done, settings)}
        for method in cfg.stage1:
            evals[f"{method}-stage1"] = (
                base_eval
                if method == NO_STAGE1
                else evaluate_stage(f"{method}-stage1", stages[method][1], sub)
            )
        for method in cfg.stage1:
            stages[method][2] = stage(method, 2, stages[method][1], cfg.stage2)
            evals[f"{method}-stage2"] = evaluate_stage(f"{method}-stage2", stages[method][2], sub)
        return evals, stages

    seeds = [cfg.seed + i for i in range(cfg.num_seeds)]
    runs = [one_seed(seed, f"seed{seed}" if cfg.num_seeds > 1 else "") for seed in seeds]
    evals, stages = runs[0]
    write_report(
        cfg, base, evals, stages, seed_evals={seed: r[0] for seed, r in zip(seeds, runs, strict=True)}
    )
    log(f"report: {out / 'report.md'}")
    return out
