"""Unbiased pass@k estimator (Chen et al., 2021, "Evaluating Large Language Models Trained on Code").

Given n samples of which c are correct, the probability that a uniformly drawn k-subset contains at least
one correct sample is

    pass@k = 1 - C(n - c, k) / C(n, k)

Binomial coefficients overflow float64 for n in the hundreds, so we use the product form

    C(n - c, k) / C(n, k) = prod_{i = n - c + 1}^{n} (1 - k / i)

which only multiplies numbers in [0, 1].
"""

from collections.abc import Sequence
from numbers import Integral


def _check_int(name: str, value: object) -> int:
    # bool is an Integral subclass; a True/False count is almost certainly a bug upstream.
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    return int(value)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased estimate of pass@k from `n` samples with `c` correct ones.

    Requires 1 <= k <= n and 0 <= c <= n. Returns a float in [0, 1].
    """
    n, c, k = _check_int("n", n), _check_int("c", c), _check_int("k", k)
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if not 0 <= c <= n:
        raise ValueError(f"c must be in [0, n={n}], got {c}")
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, n={n}], got {k}")
    if n - c < k:
        # Every k-subset must contain a correct sample.
        return 1.0
    miss = 1.0
    for i in range(n - c + 1, n + 1):
        miss *= 1.0 - k / i
    return 1.0 - miss


def mean_pass_at_k(n: int, correct_counts: Sequence[int], k: int) -> float:
    """Mean of `pass_at_k(n, c, k)` over problems, one correct count `c` per problem."""
    if len(correct_counts) == 0:
        raise ValueError("correct_counts must not be empty")
    return sum(pass_at_k(n, c, k) for c in correct_counts) / len(correct_counts)
