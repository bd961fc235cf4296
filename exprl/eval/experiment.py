"""`exprl experiment`: the comparison of docs/design.md §1 end to end, resumable, with a report directory.

From one base model, every Stage I method (SFT on references, sparse GRPO, ExpRL-Outcome, ExpRL-Process,
self-distillation, or "none" = the base model itself) is trained with the same number of optimizer steps
and the same seed; then Stage II (sparse GRPO, same budget) starts from each Stage I result. Every
resulting model is evaluated with the same sampling settings and seed (`exprl.eval.evaluate`). The report
directory holds:

    report.md              tables: pass@1 / pass@k per split after Stage I and after Stage II, never-solved
                           share, problems the base model never solved that each method solves, compute
    results.json           every number in the tables, the training curves, settings, machine, seeds
    plots/*.png            pass@k curves per stage and split; reward and entropy over training per method
    evals/<method>-stage<s>.json   each model's EvalReport (base.json for the base model)

and the work directory (`work_dir`, default runs/experiment/<name>) holds <method>/stage<s>/: the trainer's
run directory (checkpoints, metrics, the exported model) and DONE.json once that stage has finished.

A finished stage (DONE.json) and a finished evaluation (its JSON) are not redone, so rerunning the same
command after an interruption continues where it stopped (an interrupted trainer run resumes from its
last checkpoint). A stage whose starting model was trained again is redone, and so is the evaluation of
a model trained again; a finished part whose settings differ from the config is an error, never reused.
"""

import argparse
import datetime
import json
import os
import platform
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from exprl.eval.report import EvalReport
from exprl.train.metrics import read_metrics

NO_STAGE1 = "none"  # method name meaning "no Stage I": Stage II starts from the base model


@dataclass
class StageSettings:
    """One trainer configuration: a trainer YAML file plus `key=value` overrides.

    kind "train" runs the trainer on the config; "self-distill" (Stage I only, an SFT config) first samples
    the model on the problems an RL run would draw and fine-tunes it on its own verified completions
    (`exprl.eval.self_distill`)."""

    config: Path | None  # None only for the "none" method
    overrides: list[str] = field(default_factory=list)
    kind: str = "train"


@dataclass
class EvalSettings:
    tasks: list[str]
    n: int = 16
    ks: list[int] = field(default_factory=lambda: [1, 4, 16])
    temperature: float = 1.0
    max_new_tokens: int = 64
    batch_size: int = 64
    seed: int = 1234
    verifier: str = "exact"
    # As the trainer's model.chat_template: "auto" wraps prompts when the tokenizer has a chat template.
    chat_template: str = "auto"


@dataclass
class ExperimentConfig:
    name: str
    out_dir: Path  # the report: report.md, results.json, plots/, evals/ (small; meant to be kept)
    base_model: str  # "tiny" = the shipped tiny model, else a Hugging Face model directory
    seed: int
    steps: int  # optimizer steps per stage, the same for every method
    methods: dict[str, StageSettings]  # Stage I, in report order
    stage2: StageSettings
    eval: EvalSettings
    overrides: list[str] = field(default_factory=list)  # applied to every stage of every method
    work_dir: Path | None = None  # trainer runs (checkpoints, exports); default runs/experiment/<name>
    source: str = "<dict>"  # the experiment file, for the report
    reward_metric: str = "reward/sparse"  # metrics.jsonl keys plotted over training
    entropy_metric: str = "entropy"
    # Compute-table columns: label -> metric expressions ("name" or "a*b", a per-step product), the first
    # one a run logged is summed over its steps (a fallback serves runs that log a count differently).
    token_counts: dict[str, list[str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # printed under the compute table (what the counts mean)


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


# --------------------------------------------------------------------------- config


def _require(data: dict, key: str, types: type | tuple[type, ...], where: str) -> Any:
    if key not in data:
        raise ValueError(f"{where}: missing key {key!r}")
    value = data[key]
    if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        raise TypeError(f"{where}: {key!r} must be {types}, got bool")
    if not isinstance(value, types):
        raise TypeError(f"{where}: {key!r} must be {types}, got {type(value).__name__} {value!r}")
    return value


def _str_list(data: dict, key: str, where: str) -> list[str]:
    value = data.get(key, [])
    if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
        raise TypeError(f"{where}: {key!r} must be a list of strings, got {value!r}")
    return list(value)


def _resolve(path: str, base_dir: Path, where: str) -> Path:
    # Relative to the experiment file (so the command works from any directory), else to the cwd.
    for candidate in (base_dir / path, Path(path)):
        if candidate.is_file():
            return candidate.resolve()
    raise ValueError(f"{where}: config file {path!r} not found (looked in {base_dir} and .)")


def _stage_settings(
    data: Any, where: str, base_dir: Path, allow_none: bool, kinds: tuple[str, ...]
) -> StageSettings:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise TypeError(f"{where}: expected a mapping with 'config' and optional 'overrides', got {data!r}")
    unknown = set(data) - {"config", "overrides", "kind"}
    if unknown:
        raise ValueError(f"{where}: unknown keys {sorted(unknown)}")
    kind = data.get("kind", "train")
    if kind not in kinds:
        raise ValueError(f"{where}: 'kind' must be one of {list(kinds)}, got {kind!r}")
    if "config" not in data:
        if allow_none and "kind" not in data:
            return StageSettings(config=None, overrides=_str_list(data, "overrides", where))
        raise ValueError(f"{where}: missing key 'config'")
    config = _resolve(_require(data, "config", str, where), base_dir, f"{where}.config")
    return StageSettings(config=config, overrides=_str_list(data, "overrides", where), kind=kind)


def parse_config(data: Any, source: str = "<dict>", base_dir: Path | None = None) -> ExperimentConfig:
    """Validate an experiment config mapping (as read from YAML); errors name the key and `source`."""
    base_dir = base_dir or Path(".")
    if not isinstance(data, dict):
        raise TypeError(f"{source}: expected a mapping at the top level")
    known = {
        "name", "out_dir", "work_dir", "base_model", "seed", "steps", "overrides", "stage1", "stage2", "eval",
        "report",
    }  # fmt: skip
    unknown = set(data) - known
    if unknown:
        raise ValueError(f"{source}: unknown keys {sorted(unknown)}")
    steps = _require(data, "steps", int, source)
    if steps < 1:
        raise ValueError(f"{source}: 'steps' must be >= 1, got {steps}")

    stage1 = _require(data, "stage1", dict, source)
    if not stage1:
        raise ValueError(f"{source}: 'stage1' must name at least one method")
    methods = {}
    for name, settings in stage1.items():
        if not isinstance(name, str) or not name or "/" in name:
            raise ValueError(
                f"{source}: stage1 method names must be non-empty strings without '/', got {name!r}"
            )
        methods[name] = _stage_settings(
            settings, f"{source}: stage1.{name}", base_dir, name == NO_STAGE1, ("train", "self-distill")
        )
    stage2 = _stage_settings(
        _require(data, "stage2", dict, source), f"{source}: stage2", base_dir, False, ("train",)
    )

    ev = _require(data, "eval", dict, source)
    where = f"{source}: eval"
    unknown = set(ev) - set(EvalSettings.__dataclass_fields__)
    if unknown:
        raise ValueError(f"{where}: unknown keys {sorted(unknown)}")
    tasks = _str_list(ev, "tasks", where)
    if not tasks:
        raise ValueError(f"{where}: 'tasks' must list at least one problem source")
    eval_settings = EvalSettings(tasks=tasks)
    for key, types in (("n", int), ("temperature", (int, float)), ("max_new_tokens", int)):
        if key in ev:
            setattr(eval_settings, key, _require(ev, key, types, where))
    for key in ("batch_size", "seed"):
        if key in ev:
            setattr(eval_settings, key, _require(ev, key, int, where))
    for key in ("verifier", "chat_template"):
        if key in ev:
            setattr(eval_settings, key, _require(ev, key, str, where))
    if eval_settings.chat_template not in ("auto", "never"):
        raise ValueError(
            f"{where}: 'chat_template' must be 'auto' or 'never', got {eval_settings.chat_template!r}"
        )
    if "ks" in ev:
        ks = _require(ev, "ks", list, where)
        if not ks or not all(isinstance(k, int) and not isinstance(k, bool) for k in ks):
            raise TypeError(f"{where}: 'ks' must be a non-empty list of ints, got {ks!r}")
        eval_settings.ks = ks
    if eval_settings.n < 1 or any(not 1 <= k <= eval_settings.n for k in eval_settings.ks):
        raise ValueError(
            f"{where}: every k in 'ks' must lie in [1, n={eval_settings.n}], got {eval_settings.ks}"
        )

    report = data.get("report", {}) or {}
    if not isinstance(report, dict):
        raise TypeError(f"{source}: 'report' must be a mapping")
    unknown = set(report) - {"reward_metric", "entropy_metric", "token_counts", "notes"}
    if unknown:
        raise ValueError(f"{source}: report: unknown keys {sorted(unknown)}")
    token_counts = report.get("token_counts", {}) or {}
    if not isinstance(token_counts, dict):
        raise TypeError(f"{source}: report.token_counts must map a column label to metric expressions")
    token_counts = {k: [v] if isinstance(v, str) else v for k, v in token_counts.items()}
    for label, exprs in token_counts.items():
        if not isinstance(exprs, list) or not exprs or not all(isinstance(e, str) and e for e in exprs):
            raise TypeError(
                f"{source}: report.token_counts.{label}: expected a metric name or a list of them"
            )

    return ExperimentConfig(
        name=_require(data, "name", str, source),
        out_dir=Path(_require(data, "out_dir", str, source)),
        work_dir=Path(_require(data, "work_dir", str, source)) if "work_dir" in data else None,
        base_model=str(data.get("base_model", "tiny")),
        seed=_require(data, "seed", int, source) if "seed" in data else 0,
        steps=steps,
        methods=methods,
        stage2=stage2,
        eval=eval_settings,
        overrides=_str_list(data, "overrides", source),
        reward_metric=str(report.get("reward_metric", "reward/sparse")),
        entropy_metric=str(report.get("entropy_metric", "entropy")),
        token_counts=token_counts,
        notes=_str_list(report, "notes", f"{source}: report"),
    )


def load_experiment_config(path: str | os.PathLike) -> ExperimentConfig:
    """Read and validate an experiment YAML file."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML: {e}") from e
    cfg = parse_config(data, source=str(path), base_dir=path.parent)
    cfg.source = str(path)
    return cfg


# --------------------------------------------------------------------------- orchestration


def _write_json(path: Path, data: Any) -> None:
    # Write-then-rename: an interrupted write never leaves a half file that resume would trust.
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    tmp.replace(path)


def _base_model_path(cfg: ExperimentConfig) -> Path:
    if cfg.base_model == "tiny":
        from exprl.models import tiny_base_path

        return tiny_base_path()
    path = Path(cfg.base_model)
    if not path.is_dir():
        raise ValueError(f"base_model: {cfg.base_model!r} is neither 'tiny' nor a model directory")
    return path


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
    _write_json(marker, done)
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
    _write_json(out, data)
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
    evaluator = evaluator or make_evaluator(cfg.eval)
    out = cfg.out_dir
    work = cfg.work_dir or Path("runs") / "experiment" / cfg.name
    (out / "evals").mkdir(parents=True, exist_ok=True)
    base = _base_model_path(cfg)

    def evaluate_stage(name: str, done: dict[str, Any]) -> dict[str, Any]:
        path = out / "evals" / f"{name}.json"
        return _evaluate_once(
            evaluator, cfg.eval, Path(done["model_dir"]), path, log, done.get("finished_at")
        )

    def stage(method: str, number: int, init: dict[str, Any], settings: StageSettings) -> dict[str, Any]:
        run_dir = work / method / f"stage{number}"
        spec = StageSpec(
            method, number, Path(init["model_dir"]), run_dir, settings, cfg.steps, cfg.seed, cfg.overrides
        )
        return _run_stage(stage_runner, spec, log, init_finished_at=init.get("finished_at"))

    base_done = {"method": "base", "model_dir": str(base), "steps": 0, "wall_s": 0.0}
    evals = {"base": evaluate_stage("base", base_done)}
    stages: dict[str, dict[int, dict[str, Any]]] = {}
    for method, settings in cfg.methods.items():
        stages[method] = {1: base_done if method == NO_STAGE1 else stage(method, 1, base_done, settings)}
    for method in cfg.methods:
        evals[f"{method}-stage1"] = (
            evals["base"] if method == NO_STAGE1 else evaluate_stage(f"{method}-stage1", stages[method][1])
        )
    for method in cfg.methods:
        stages[method][2] = stage(method, 2, stages[method][1], cfg.stage2)
        evals[f"{method}-stage2"] = evaluate_stage(f"{method}-stage2", stages[method][2])

    write_report(cfg, base, evals, stages)
    log(f"report: {out / 'report.md'}")
    return out


# --------------------------------------------------------------------------- report


def machine_description() -> dict[str, Any]:
    """Where the numbers were measured: OS, CPU count, torch version, accelerator."""
    import torch

    cpu_model = platform.processor()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [
            line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if "model name" in line
        ]
        cpu_model = names[0] if names else cpu_model
    info = {
        "cpu_model": cpu_model,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
    }
    return info


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def newly_solved(base: dict[str, Any], other: dict[str, Any], split: str) -> tuple[int, int]:
    """(solved now, unsolved by the base): problems of `split` with no correct base sample out of n
    that have at least one correct sample in `other`. Problems are matched by id."""
    base_unsolved = {p["id"] for p in base["problems"] if p["split"] == split and p["correct"] == 0}
    solved = {p["id"] for p in other["problems"] if p["split"] == split and p["correct"] > 0}
    return len(base_unsolved & solved), len(base_unsolved)


def _training_curves(cfg: ExperimentConfig, stages: dict[str, dict[int, dict[str, Any]]]) -> dict[str, Any]:
    curves: dict[str, dict[str, dict[str, list[tuple[int, float]]]]] = {}
    for method, by_stage in stages.items():
        for stage, done in by_stage.items():
            path = done.get("metrics_path")
            if path and Path(path).is_file():
                curves.setdefault(method, {})[f"stage{stage}"] = read_metrics(path)
    return curves


def _count(series: dict[str, list[tuple[int, float]]], expressions: list[str]) -> tuple[float, str] | None:
    """Sum over steps of the first expression whose metrics the run logged: "name" or "a*b" (the product
    taken per step). None when the run logged none of them."""
    for expr in expressions:
        names = expr.split("*")
        if all(name in series for name in names):
            per_step = [dict(series[name]) for name in names]
            steps = set.intersection(*(set(p) for p in per_step))
            total = 0.0
            for step in steps:
                value = 1.0
                for p in per_step:
                    value *= p[step]
                total += value
            return total, expr
    return None


def _compute_rows(cfg, stages, curves) -> list[dict[str, Any]]:
    rows = []
    for method, by_stage in stages.items():
        row: dict[str, Any] = {"method": method}
        for stage, done in sorted(by_stage.items()):
            series = curves.get(method, {}).get(f"stage{stage}", {})
            logged_steps = sorted({step for points in series.values() for step, _ in points})
            row[f"stage{stage}"] = {
                "steps": done.get("steps", 0),
                "logged_steps": len(logged_steps),
                "wall_s": done.get("wall_s", 0.0),
                # A stage that did not train ("none") counts zero; a run that logged nothing usable, None.
                "tokens": {
                    label: (0.0, "no training") if done.get("steps", 0) == 0 else _count(series, exprs)
                    for label, exprs in cfg.token_counts.items()
                },
            }
        rows.append(row)
    return rows


def _plot_passk(cfg, evals, splits, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = sorted(cfg.eval.ks)
    fig, axes = plt.subplots(2, len(splits), figsize=(4.2 * len(splits), 6.4), squeeze=False, sharey=True)
    for row, stage in enumerate((1, 2)):
        for col, split in enumerate(splits):
            ax = axes[row][col]
            for color, method in enumerate(cfg.methods):
                m = evals[f"{method}-stage{stage}"]["splits"].get(split)
                if m is not None:
                    ys = [m["pass_at_k"][str(k)] for k in ks]
                    ax.plot(ks, ys, marker="o", label=method, color=f"C{color}")
            ax.set_xscale("log", base=2)
            ax.set_xticks(ks, [str(k) for k in ks])
            ax.set_title(f"after Stage {'I' if stage == 1 else 'II'}: {split}", fontsize=10)
            ax.set_xlabel("k")
            ax.set_ylabel("pass@k")
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _plot_training(cfg, curves, metric: str, path: Path) -> bool:
    """One panel per stage, one line per method; False (and no file) when no run logged `metric`."""
    if not any(metric in by_stage.get(s, {}) for by_stage in curves.values() for s in ("stage1", "stage2")):
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), squeeze=False)
    for col, stage in enumerate(("stage1", "stage2")):
        ax = axes[0][col]
        for color, method in enumerate(cfg.methods):  # one color per method in every panel
            points = curves.get(method, {}).get(stage, {}).get(metric)
            if points:
                ax.plot([s for s, _ in points], [v for _, v in points], label=method, color=f"C{color}")
        ax.set_title(f"{'Stage I' if stage == 'stage1' else 'Stage II (sparse GRPO)'}: {metric}", fontsize=10)
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def write_report(
    cfg: ExperimentConfig,
    base_model: Path,
    evals: dict[str, dict[str, Any]],
    stages: dict[str, dict[int, dict[str, Any]]],
) -> Path:
    """Write report.md, results.json and plots/ into cfg.out_dir from finished stages and evaluations."""
    out = cfg.out_dir
    plots = out / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    splits = list(evals["base"]["splits"])
    kmax = max(cfg.eval.ks)
    curves = _training_curves(cfg, stages)
    compute = _compute_rows(cfg, stages, curves)
    machine = machine_description()
    generated = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")

    _plot_passk(cfg, evals, splits, plots / "passk.png")
    plotted = {
        name: _plot_training(cfg, curves, metric, plots / f"{name}.png")
        for name, metric in (("reward", cfg.reward_metric), ("entropy", cfg.entropy_metric))
    }

    ev = cfg.eval
    lines = [
        f"# exprl experiment: {cfg.name}",
        "",
        f"Generated {generated} on {machine['device']} ({machine['cpu_model']}, {machine['cpus']} CPUs "
        f"visible, {machine['platform']}, torch {machine['torch']}, {machine['torch_threads']} threads).",
        f"Command: `exprl experiment --config {cfg.source}`. Base model: `{cfg.base_model}` ({base_model}). "
        f"Training seed {cfg.seed}; evaluation seed {ev.seed}.",
        "",
        "## Compute budget",
        "",
        "Every Stage I method and every Stage II run takes the same number of optimizer steps "
        f"({cfg.steps}), from the same seed, with the batch shape set by the shared overrides "
        f"(`{' '.join(cfg.overrides) or 'none'}`) on top of each method's trainer config. "
        "SFT trains on reference solutions, the RL methods on their own samples, so trained and sampled "
        "tokens can only be matched as closely as the methods allow: the measured counts are in the "
        f"compute table below. `{NO_STAGE1}` means no Stage I (Stage II starts from the base model).",
        "",
        f"Evaluation: n = {ev.n} samples per problem at temperature {ev.temperature}, at most "
        f"{ev.max_new_tokens} new tokens, verifier `{ev.verifier}`, unbiased pass@k; tasks "
        + ", ".join(f"`{t}`" for t in ev.tasks)
        + ".",
        "",
        "## pass@k after Stage I and after Stage II",
        "",
    ]
    header = ["method"]
    for stage in ("I", "II"):
        for split in splits:
            header += [f"{stage}: {split} pass@1", f"{stage}: {split} pass@{kmax}"]
    lines += ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    base_cells = []
    for split in splits:
        m = evals["base"]["splits"][split]
        base_cells.append(
            f"{split} pass@1 {m['pass_at_k']['1']:.3f}, pass@{kmax} {m['pass_at_k'][str(kmax)]:.3f}"
        )
    for method in cfg.methods:
        cells = [method]
        for stage in (1, 2):
            for split in splits:
                m = evals[f"{method}-stage{stage}"]["splits"].get(split)
                cells += [_fmt(m and m["pass_at_k"].get("1")), _fmt(m and m["pass_at_k"].get(str(kmax)))]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Base model before any training: " + "; ".join(base_cells) + ".", ""]

    lines += [
        "## Coverage, entropy and length",
        "",
        "never solved: share of problems with no correct sample out of n. newly solved: of the problems "
        "the base model never solved, how many this model solves at least once. Entropy (nats) and length "
        "(tokens) are means over sampled response tokens / responses.",
        "",
    ]
    header = ["method", "stage"]
    for split in splits:
        header += [f"{split} never solved", f"{split} newly solved", f"{split} entropy", f"{split} length"]
    lines += ["| " + " | ".join(header) + " |", "|---|---|" + "---:|" * (len(header) - 2)]
    newly: dict[str, dict[str, list[int]]] = {}
    for method in cfg.methods:
        for stage in (1, 2):
            key = f"{method}-stage{stage}"
            cells = [method, "I" if stage == 1 else "II"]
            for split in splits:
                m = evals[key]["splits"].get(split)
                solved, unsolved = newly_solved(evals["base"], evals[key], split)
                newly.setdefault(key, {})[split] = [solved, unsolved]
                cells += [
                    _fmt(m and m["never_solved"]),
                    f"{solved}/{unsolved}",
                    _fmt(m and m["mean_entropy"]),
                    "n/a" if m is None else f"{m['mean_response_length']:.1f}",
                ]
            lines.append("| " + " | ".join(cells) + " |")

    lines += ["", "## Compute (measured)", ""]
    token_cols = [f"{s} {label}" for s in ("I", "II") for label in cfg.token_counts]
    header = ["method", "I steps logged", "I wall s", "II steps logged", "II wall s", *token_cols]
    lines += ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    sources, mismatched = [], []
    for row in compute:
        cells = [row["method"]]
        for stage in ("stage1", "stage2"):
            cells += [str(row[stage]["logged_steps"]), f"{row[stage]['wall_s']:.0f}"]
            if row[stage]["steps"] and row[stage]["logged_steps"] != cfg.steps:
                mismatched.append(f"{row['method']} stage {stage[-1]}: {row[stage]['logged_steps']}")
        for stage in ("stage1", "stage2"):
            for label in cfg.token_counts:
                count = row[stage]["tokens"][label]
                cells.append("not logged" if count is None else f"{count[0]:.0f}")
                if count is not None and count[1] not in ("no training", cfg.token_counts[label][0]):
                    sources.append(f"{row['method']} stage {stage[-1]} {label}: `{count[1]}`")
        lines.append("| " + " | ".join(cells) + " |")
    notes = [
        f"{label}: sum over steps of `{exprs[0]}`" + "".join(f", else `{e}`" for e in exprs[1:]) + "."
        for label, exprs in cfg.token_counts.items()
    ]
    if sources:
        notes.append("Counted from a fallback expression: " + "; ".join(sources) + ".")
    notes += cfg.notes
    for method, by_stage in stages.items():
        for stage, done in sorted(by_stage.items()):
            if done.get("extra"):
                details = ", ".join(f"{k} {v}" for k, v in done["extra"].items())
                notes.append(f"{method} stage {stage}, outside the trainer's metrics: {details}.")
    if mismatched:
        notes.append(
            f"**Budget mismatch**: these runs logged a number of steps other than {cfg.steps}: "
            + "; ".join(mismatched)
            + "."
        )
    lines += [""] + [f"- {note}" for note in notes]

    lines += ["", "## Plots", "", "![pass@k per stage and split](plots/passk.png)", ""]
    for name, metric in (("reward", cfg.reward_metric), ("entropy", cfg.entropy_metric)):
        if plotted[name]:
            lines += [f"![{metric} over training](plots/{name}.png)", ""]
        else:
            lines += [f"(no run logged `{metric}`, so there is no {name} plot)", ""]
    (out / "report.md").write_text("\n".join(lines))

    _write_json(
        out / "results.json",
        {
            "name": cfg.name,
            "generated": generated,
            "machine": machine,
            "seeds": {"train": cfg.seed, "eval": ev.seed},
            "config": asdict(cfg),
            "base_model": str(base_model),
            "evals": evals,
            "newly_solved": newly,
            "stages": {m: {f"stage{s}": d for s, d in by.items()} for m, by in stages.items()},
            "compute": compute,
            "training_curves": curves,
        },
    )
    return out / "report.md"


# ------------------------------------------------------------ the real stage runner and evaluator


def _trainer_config(spec: StageSpec, *extra: str):
    """The stage's TrainConfig: its file, the experiment-wide overrides, its own, then what the experiment
    fixes (init model, run directory, steps, seed, export on, the trainer's own evaluation off)."""
    from exprl.train.config import load_config

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
    """The real stage runner: `exprl.train.run` on the stage's config (or self-distillation, by kind)."""
    from exprl.train import run

    if spec.settings.kind == "self-distill":
        return self_distill_stage(spec)
    run_dir = Path(run(_trainer_config(spec)))
    return StageResult(model_dir=run_dir / "export", metrics_path=run_dir / "metrics.jsonl")


def self_distill_stage(spec: StageSpec) -> StageResult:
    """Sample `rollout.group_size` completions of each problem the RL methods draw in `steps` steps of
    `rollout.prompts_per_step` prompts, keep the verified ones, then SFT on them for `steps` steps."""
    from exprl.data import load_problems, step_prompts
    from exprl.eval.self_distill import collect_correct_samples, write_records
    from exprl.models import load_model_and_tokenizer, prompt_text
    from exprl.train import run

    cfg = _trainer_config(spec)
    if cfg.method != "sft":
        raise ValueError(f"stage1.{spec.method}: self-distillation needs an SFT trainer config (method: sft)")
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
        format_prompt=lambda p: prompt_text(p, tokenizer, cfg.model.chat_template),
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
    path = spec.run_dir / "self_distill.jsonl"
    extra["records written"] = write_records(data.records, path, min_records=cfg.sft.batch_size)
    run_dir = Path(run(_trainer_config(spec, f"data.train={path.resolve()}")))
    return StageResult(model_dir=run_dir / "export", metrics_path=run_dir / "metrics.jsonl", extra=extra)


def make_evaluator(settings: EvalSettings, progress: bool = True) -> Evaluator:
    """An evaluator that loads a model directory and runs `evaluate` with the experiment's settings."""

    def evaluate_model(model_dir: Path) -> EvalReport:
        from exprl.data import load_problems
        from exprl.eval.cli import evaluate_model_dir

        return evaluate_model_dir(
            model_dir,
            [p for spec in settings.tasks for p in load_problems(spec)],
            chat_template=settings.chat_template,
            n=settings.n,
            ks=settings.ks,
            temperature=settings.temperature,
            max_new_tokens=settings.max_new_tokens,
            seed=settings.seed,
            batch_size=settings.batch_size,
            verifier=settings.verifier,
            progress=progress,
        )

    return evaluate_model


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="exprl experiment",
        description="Stage I methods x Stage II sparse GRPO from one base model, evaluated with pass@k. "
        "Rerunning the same command resumes where it stopped.",
    )
    parser.add_argument("--config", required=True, help="experiment YAML, e.g. configs/experiment-tiny.yaml")
    parser.add_argument("--out", default=None, help="report directory (overrides out_dir of the config)")
    parser.add_argument("--work-dir", default=None, help="trainer runs directory (overrides work_dir)")
    parser.add_argument("--no-progress", action="store_true", help="hide the evaluation progress bars")
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
    run_experiment(cfg, evaluator=make_evaluator(cfg.eval, progress=not args.no_progress))
    return 0
