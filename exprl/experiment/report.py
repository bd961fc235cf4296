"""The experiment's report: report.md (tables), results.json (every number) and plots/, written from the
finished stages and evaluations."""

from __future__ import annotations

import datetime
import json
import os
import platform
from dataclasses import asdict
from pathlib import Path
from typing import Any

from exprl.experiment.config import NO_STAGE1, ExperimentConfig, worker_threads
from exprl.experiment.intervals import bootstrap_interval, table
from exprl.train.metrics import read_metrics


def write_json(path: Path, data: Any) -> None:
    """JSON to `path`, written then renamed: an interrupted write never leaves a half file that resume
    would trust."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    tmp.replace(path)


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
                    for label, exprs in cfg.report.token_counts.items()
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
            for color, method in enumerate(cfg.stage1):
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
        for color, method in enumerate(cfg.stage1):  # one color per method in every panel
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


def _intervals(cfg, seed_evals, splits, kmax: int) -> dict[str, dict[str, list[float]]]:
    """ "<method>-stage<s>" -> "<split> <metric>" -> [mean, low, high] over seeds and problems."""
    reports = list(seed_evals.values())
    out: dict[str, dict[str, list[float]]] = {}
    for method in cfg.stage1:
        for stage in (1, 2):
            key = f"{method}-stage{stage}"
            out[key] = {
                f"{split} {metric}": list(bootstrap_interval(table([r[key] for r in reports], split, metric)))
                for split in splits
                for metric in ("pass@1", f"pass@{kmax}", "never_solved")
            }
    return out


def _interval_section(cfg, seed_evals, splits, kmax: int) -> list[str]:
    seeds = sorted(seed_evals)
    lines = [
        "## Across seeds: mean [95% interval]",
        "",
        f"Training seeds {', '.join(map(str, seeds))}; each cell is the mean over seeds and problems with a "
        "95% bootstrap interval (seeds and problems resampled with replacement, 2000 draws). never solved: "
        "share of problems with no correct sample out of n.",
        "",
    ]
    header = ["method", "stage"] + [
        f"{split} {metric}" for split in splits for metric in ("pass@1", f"pass@{kmax}", "never solved")
    ]
    lines += ["| " + " | ".join(header) + " |", "|---|---|" + "---:|" * (len(header) - 2)]
    for key, cells in _intervals(cfg, seed_evals, splits, kmax).items():
        method, stage = key.rsplit("-stage", 1)
        row = [method, "I" if stage == "1" else "II"]
        row += [f"{m:.3f} [{lo:.3f}, {hi:.3f}]" for m, lo, hi in cells.values()]
        lines.append("| " + " | ".join(row) + " |")
    return lines + [""]


def write_report(
    cfg: ExperimentConfig,
    base_model: Path,
    evals: dict[str, dict[str, Any]],
    stages: dict[str, dict[int, dict[str, Any]]],
    seed_evals: dict[int, dict[str, dict[str, Any]]] | None = None,
    jobs: int = 1,
) -> Path:
    """Write report.md, results.json and plots/ into cfg.out_dir from finished stages and evaluations
    (`evals`, `stages`: the first seed's); `seed_evals` (seed -> evals, default {cfg.seed: evals}) feed the
    table of means with 95% bootstrap intervals over seeds and problems. `jobs`: the processes the chains
    ran in (`exprl experiment --jobs`), for the header."""
    seed_evals = seed_evals or {cfg.seed: evals}
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
        for name, metric in (("reward", cfg.report.reward_metric), ("entropy", cfg.report.entropy_metric))
    }

    ev = cfg.eval
    threads = f"{machine['torch_threads']} threads"
    jobs_flag = ""
    if jobs > 1:
        threads = f"{jobs} processes of {worker_threads(jobs)} torch threads"
        jobs_flag = f" --jobs {jobs}"
    lines = [
        f"# exprl experiment: {cfg.name}",
        "",
        f"Generated {generated} on {machine['device']} ({machine['cpu_model']}, {machine['cpus']} CPUs "
        f"visible, {machine['platform']}, torch {machine['torch']}, {threads}).",
        f"Command: `exprl experiment --config {cfg.source}{jobs_flag}`. "
        f"Base model: `{cfg.base_model}` ({base_model}). "
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
        + ", ".join(f"`{t}`" for t in ev.problems)
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
    for method in cfg.stage1:
        cells = [method]
        for stage in (1, 2):
            for split in splits:
                m = evals[f"{method}-stage{stage}"]["splits"].get(split)
                cells += [_fmt(m and m["pass_at_k"].get("1")), _fmt(m and m["pass_at_k"].get(str(kmax)))]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Base model before any training: " + "; ".join(base_cells) + ".", ""]

    lines += _interval_section(cfg, seed_evals, splits, kmax)
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
    for method in cfg.stage1:
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
    token_cols = [f"{s} {label}" for s in ("I", "II") for label in cfg.report.token_counts]
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
            for label in cfg.report.token_counts:
                count = row[stage]["tokens"][label]
                cells.append("not logged" if count is None else f"{count[0]:.0f}")
                if count is not None and count[1] not in ("no training", cfg.report.token_counts[label][0]):
                    sources.append(f"{row['method']} stage {stage[-1]} {label}: `{count[1]}`")
        lines.append("| " + " | ".join(cells) + " |")
    notes = [
        f"{label}: sum over steps of `{exprs[0]}`" + "".join(f", else `{e}`" for e in exprs[1:]) + "."
        for label, exprs in cfg.report.token_counts.items()
    ]
    if sources:
        notes.append("Counted from a fallback expression: " + "; ".join(sources) + ".")
    notes += cfg.report.notes
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
    for name, metric in (("reward", cfg.report.reward_metric), ("entropy", cfg.report.entropy_metric)):
        if plotted[name]:
            lines += [f"![{metric} over training](plots/{name}.png)", ""]
        else:
            lines += [f"(no run logged `{metric}`, so there is no {name} plot)", ""]
    (out / "report.md").write_text("\n".join(lines))

    write_json(
        out / "results.json",
        {
            "name": cfg.name,
            "generated": generated,
            "machine": machine,
            "seeds": {"train": cfg.seed, "eval": ev.seed, "all_train": sorted(seed_evals)},
            "intervals": _intervals(cfg, seed_evals, splits, kmax),
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
