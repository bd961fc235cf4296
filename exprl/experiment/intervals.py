"""Means with 95% bootstrap intervals over training seeds and problems, from per-problem correct counts.

A metric is a per-problem value (pass@k by the unbiased estimator, or "never solved": 1 when no sample of
the problem is correct) in a (seeds x problems) table; the same problems are evaluated for every seed.
The interval resamples seeds and problems independently with replacement (a two-way bootstrap), so it
covers both the training noise between seeds and the sampling of problems.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from exprl.eval.passk import pass_at_k


def per_problem(report: dict[str, Any], split: str, metric: str) -> dict[str, float]:
    """problem id -> the metric ("pass@k" or "never_solved") of one EvalReport dict's split."""
    n = int(report["settings"]["n"])
    values = {}
    for problem in report["problems"]:
        if problem["split"] != split:
            continue
        c = int(problem["correct"])
        if metric == "never_solved":
            values[problem["id"]] = float(c == 0)
        elif metric.startswith("pass@"):
            values[problem["id"]] = pass_at_k(n, c, int(metric[5:]))
        else:
            raise ValueError(f"metric must be 'pass@k' or 'never_solved', got {metric!r}")
    return values


def table(reports: Sequence[dict[str, Any]], split: str, metric: str) -> np.ndarray:
    """(seeds x problems) values of `metric` on `split`, one row per report, columns in a shared order;
    ValueError when the reports did not evaluate the same problems."""
    rows = [per_problem(r, split, metric) for r in reports]
    ids = sorted(rows[0]) if rows else []
    for i, row in enumerate(rows):
        if sorted(row) != ids:
            raise ValueError(f"report {i} evaluated other {split!r} problems than report 0")
    return np.array([[row[p] for p in ids] for row in rows], dtype=np.float64)


def bootstrap_interval(
    values: np.ndarray, resamples: int = 2000, level: float = 0.95, seed: int = 0
) -> tuple[float, float, float]:
    """(mean, low, high) of a (seeds x problems) table: the percentile interval of the mean over
    `resamples` tables drawn with seeds and problems resampled with replacement."""
    if values.ndim != 2 or values.size == 0:
        raise ValueError(f"values must be a non-empty (seeds, problems) table, got shape {values.shape}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    rng = np.random.default_rng(seed)
    seeds, problems = values.shape
    rows = rng.integers(0, seeds, size=(resamples, seeds))
    cols = rng.integers(0, problems, size=(resamples, problems))
    # mean of values[rows][:, cols] = mean over the drawn seeds of each drawn row's mean over drawn columns
    means = np.array([values[r][:, c].mean() for r, c in zip(rows, cols, strict=True)])
    tail = (1 - level) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return float(values.mean()), float(low), float(high)
