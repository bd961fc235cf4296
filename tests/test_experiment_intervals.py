"""Bootstrap intervals over seeds and problems, checked against direct computations."""

import numpy as np
import pytest

from exprl.eval.passk import pass_at_k
from exprl.experiment.intervals import bootstrap_interval, per_problem, table


def report(counts, n=4, split="test"):
    problems = [{"id": f"p{i}", "split": split, "correct": c} for i, c in enumerate(counts)]
    return {"settings": {"n": n}, "problems": problems}


def test_per_problem_metrics():
    r = report([0, 1, 4])
    assert per_problem(r, "test", "pass@1") == {"p0": 0.0, "p1": 0.25, "p2": 1.0}
    assert per_problem(r, "test", "pass@2") == {f"p{i}": pass_at_k(4, c, 2) for i, c in enumerate([0, 1, 4])}
    assert per_problem(r, "test", "never_solved") == {"p0": 1.0, "p1": 0.0, "p2": 0.0}
    assert per_problem(r, "ood", "pass@1") == {}
    with pytest.raises(ValueError, match="metric"):
        per_problem(r, "test", "mean")


def test_table_aligns_problems_and_refuses_different_sets():
    values = table([report([0, 4]), report([4, 0])], "test", "pass@1")
    assert values.tolist() == [[0.0, 1.0], [1.0, 0.0]]
    with pytest.raises(ValueError, match="other 'test' problems"):
        table([report([0, 4]), report([0])], "test", "pass@1")


def test_constant_table_has_a_point_interval():
    assert bootstrap_interval(np.full((3, 5), 0.25)) == (0.25, 0.25, 0.25)


def test_seed_only_variation_matches_a_direct_bootstrap_of_seed_means():
    # every problem agrees within a seed: the two-way bootstrap reduces to resampling the seed means
    seed_means = np.array([0.1, 0.4, 0.5, 0.9])
    values = np.repeat(seed_means[:, None], 6, axis=1)
    mean, low, high = bootstrap_interval(values, resamples=4000)
    rng = np.random.default_rng(123)
    direct = [rng.choice(seed_means, size=4).mean() for _ in range(4000)]
    assert mean == pytest.approx(0.475)
    assert low == pytest.approx(np.quantile(direct, 0.025), abs=0.03)
    assert high == pytest.approx(np.quantile(direct, 0.975), abs=0.03)


def test_more_problems_narrow_the_interval():
    rng = np.random.default_rng(0)
    few = bootstrap_interval(rng.integers(0, 2, size=(3, 16)).astype(float))
    many = bootstrap_interval(rng.integers(0, 2, size=(3, 256)).astype(float))
    assert many[2] - many[1] < few[2] - few[1]
    with pytest.raises(ValueError, match="non-empty"):
        bootstrap_interval(np.zeros((0, 3)))
    with pytest.raises(ValueError, match="level"):
        bootstrap_interval(np.ones((2, 2)), level=1.5)
