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

import ctypes
import json
import multiprocessing
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

from exprl.eval import EvalSettings
from exprl.experiment.config import NO_STAGE1, ExperimentConfig, StageSettings, worker_threads
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


@dataclass
class _Parts:
    """The experiment's unit steps (train one stage, evaluate one model), each done at most once and
    skipped when its record exists: the serial driver, a parallel worker and the final pass share them."""

    cfg: ExperimentConfig
    stage_runner: StageRunner
    evaluator: Evaluator
    log: Callable[[str], None]
    base_done: dict[str, Any]
    base_eval: dict[str, Any] | None = None

    @property
    def work(self) -> Path:
        return self.cfg.work_dir or Path("runs") / "experiment" / self.cfg.name

    def evaluate(self, name: str, done: dict[str, Any], sub: str = "") -> dict[str, Any]:
        path = self.cfg.out_dir / "evals" / sub / f"{name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        return _evaluate_once(
            self.evaluator, self.cfg.eval, Path(done["model_dir"]), path, self.log, done.get("finished_at")
        )

    def stage(
        self, sub: str, seed: int, method: str, number: int, init: dict[str, Any], settings: StageSettings
    ) -> dict[str, Any]:
        run_dir = self.work / sub / method / f"stage{number}"
        spec = StageSpec(
            method,
            number,
            Path(init["model_dir"]),
            run_dir,
            settings,
            self.cfg.steps,
            seed,
            self.cfg.overrides,
        )
        return _run_stage(self.stage_runner, spec, self.log, init_finished_at=init.get("finished_at"))

    def stage1(self, sub: str, seed: int, method: str) -> dict[str, Any]:
        if method == NO_STAGE1:
            return self.base_done
        return self.stage(sub, seed, method, 1, self.base_done, self.cfg.stage1[method])

    def stage1_eval(self, sub: str, method: str, done: dict[str, Any]) -> dict[str, Any]:
        assert self.base_eval is not None
        return self.base_eval if method == NO_STAGE1 else self.evaluate(f"{method}-stage1", done, sub)

    def chain(self, sub: str, seed: int, method: str) -> None:
        """One method's whole path for one seed: Stage I, its evaluation, Stage II, its evaluation."""
        first = self.stage1(sub, seed, method)
        self.stage1_eval(sub, method, first)
        self.evaluate(f"{method}-stage2", self.stage(sub, seed, method, 2, first, self.cfg.stage2), sub)

    def one_seed(self, seed: int, sub: str) -> tuple[dict[str, Any], dict[str, dict[int, dict[str, Any]]]]:
        """Every method for one seed, all Stage I runs first (the serial order)."""
        evals: dict[str, Any] = {"base": self.base_eval}
        stages: dict[str, dict[int, dict[str, Any]]] = {}
        for method in self.cfg.stage1:
            stages[method] = {1: self.stage1(sub, seed, method)}
        for method in self.cfg.stage1:
            evals[f"{method}-stage1"] = self.stage1_eval(sub, method, stages[method][1])
        for method in self.cfg.stage1:
            stages[method][2] = self.stage(sub, seed, method, 2, stages[method][1], self.cfg.stage2)
            evals[f"{method}-stage2"] = self.evaluate(f"{method}-stage2", stages[method][2], sub)
        return evals, stages


def _seed_dir(cfg: ExperimentConfig, seed: int) -> str:
    return f"seed{seed}" if cfg.num_seeds > 1 else ""


_PR_SET_PDEATHSIG = 1  # prctl(2)


def _init_worker(threads: int, parent: int) -> None:
    """A worker dies with the experiment process: on Linux the kernel sends it SIGTERM when its parent dies
    (a killed `exprl experiment` must not leave chains running that would hold their run directories'
    locks against the rerun; an interrupted stage resumes from its last checkpoint)."""
    if sys.platform == "linux":
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the parent died before the request took effect
            os._exit(1)
    import torch

    torch.set_num_threads(threads)


def _chain_worker(parts: _Parts, seed: int, method: str) -> None:
    """Runs in a worker process: one (seed, method) chain, its log lines prefixed with both."""
    sub = _seed_dir(parts.cfg, seed)
    parts.log = partial(_prefixed_print, f"[seed {seed} {method}]")
    parts.chain(sub, seed, method)


def _prefixed_print(prefix: str, line: str) -> None:
    print(f"{prefix} {line}", flush=True)


def _run_parallel(parts: _Parts, seeds: list[int], jobs: int) -> None:
    """Every (seed, method) chain in `jobs` spawned processes of `worker_threads(jobs)` torch threads each.
    The stage runner and evaluator must pickle (module-level callables); the records they leave make the
    serial pass that follows skip every part."""
    threads = worker_threads(jobs)
    work = [(seed, method) for seed in seeds for method in parts.cfg.stage1]
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(
        jobs, mp_context=context, initializer=_init_worker, initargs=(threads, os.getpid())
    ) as pool:
        futures = [pool.submit(_chain_worker, replace(parts, log=print), s, m) for s, m in work]
        try:
            for future in as_completed(futures):
                future.result()
        except BaseException:
            for future in futures:
                future.cancel()
            raise


def run_experiment(
    cfg: ExperimentConfig,
    *,
    stage_runner: StageRunner | None = None,
    evaluator: Evaluator | None = None,
    log: Callable[[str], None] = print,
    jobs: int = 1,
) -> Path:
    """Run (or resume) the whole comparison; returns the report directory `cfg.out_dir`.

    `stage_runner` and `evaluator` default to the real trainer (`exprl.train.run`) and `exprl.eval.evaluate`.
    Order: base evaluation, then per seed every Stage I, their evaluations, then Stage II and its evaluation
    per method. `jobs` > 1 runs the (seed, method) chains in that many processes instead (the machine's
    cores split between them; a small model trains faster as two 1-thread processes than as one 2-thread
    one), then the serial pass finds every part done and only writes the report.
    """
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs must be an int >= 1, got {jobs!r}")
    stage_runner = stage_runner or train_stage
    evaluator = evaluator or make_evaluator(cfg.eval, cfg.chat_template)
    out = cfg.out_dir
    (out / "evals").mkdir(parents=True, exist_ok=True)
    base = resolve_model_path(cfg.base_model, key="base_model")
    base_done = {"method": "base", "model_dir": str(base), "steps": 0, "wall_s": 0.0}
    parts = _Parts(cfg, stage_runner, evaluator, log, base_done)
    parts.base_eval = parts.evaluate("base", base_done)

    seeds = [cfg.seed + i for i in range(cfg.num_seeds)]
    if jobs > 1:
        _run_parallel(parts, seeds, jobs)
    runs = [parts.one_seed(seed, _seed_dir(cfg, seed)) for seed in seeds]
    evals, stages = runs[0]
    write_report(
        cfg,
        base,
        evals,
        stages,
        seed_evals={seed: r[0] for seed, r in zip(seeds, runs, strict=True)},
        jobs=jobs,
    )
    log(f"report: {out / 'report.md'}")
    return out
