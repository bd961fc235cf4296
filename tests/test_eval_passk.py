"""pass@k: hand-computed cases, exact rational arithmetic, and brute-force enumeration of k-subsets."""

import itertools
import math
from fractions import Fraction

import pytest

from exprl.eval.passk import mean_pass_at_k, pass_at_k


@pytest.mark.parametrize(
    ("n", "c", "k", "expected"),
    [
        (5, 2, 1, 2 / 5),  # pass@1 is the fraction correct
        (5, 2, 2, 1 - 3 / 10),  # C(3,2)=3 failing pairs out of C(5,2)=10
        (10, 1, 5, 0.5),  # the one correct sample is in half of the 5-subsets
        (4, 0, 3, 0.0),
        (4, 4, 1, 1.0),
        (4, 2, 3, 1.0),  # only 2 wrong samples: every 3-subset has a correct one
        (16, 3, 4, 1 - (13 * 12 * 11 * 10) / (16 * 15 * 14 * 13)),
    ],
)
def test_hand_computed(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("n", range(1, 8))
def test_matches_enumeration_of_all_k_subsets(n):
    for c in range(n + 1):
        correct = set(range(c))  # which samples are correct does not matter, only how many
        for k in range(1, n + 1):
            subsets = list(itertools.combinations(range(n), k))
            hits = sum(1 for s in subsets if correct.intersection(s))
            assert pass_at_k(n, c, k) == pytest.approx(hits / len(subsets), abs=1e-12), (n, c, k)


def test_stable_where_binomials_overflow_float():
    n, c, k = 2000, 700, 300  # C(2000, 300) is far beyond float64 range
    exact = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
    assert pass_at_k(n, c, k) == pytest.approx(float(exact), rel=1e-12)


def test_mean_over_problems():
    assert mean_pass_at_k(4, [0, 4, 2], 1) == pytest.approx((0 + 1 + 0.5) / 3)


@pytest.mark.parametrize(
    ("args", "error", "name"),
    [
        ((0, 0, 1), ValueError, "n"),
        ((4, 5, 1), ValueError, "c"),
        ((4, -1, 1), ValueError, "c"),
        ((4, 1, 0), ValueError, "k"),
        ((4, 1, 5), ValueError, "k"),
        ((4.0, 1, 1), TypeError, "n"),
        ((4, True, 1), TypeError, "c"),
        ((4, 1, "2"), TypeError, "k"),
    ],
)
def test_bad_arguments_are_named(args, error, name):
    with pytest.raises(error, match=rf"^{name} "):
        pass_at_k(*args)


def test_mean_of_nothing_is_an_error():
    with pytest.raises(ValueError, match="correct_counts"):
        mean_pass_at_k(4, [], 1)
