"""Sparse verifiers: 1.0 when the response's final answer is right, else 0.0 (Stage II's binary reward).

A response without a final answer (`extract_answer` -> None) is wrong, not ungraded: it scores 0.0.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

from math_verify import parse, verify

from exprl.rewards.answers import extract_answer, same_answer
from exprl.rewards.base import Rollout
from exprl.rewards.registry import register


@register
class ExactVerifier:
    """The built-in tasks' answers: `same_answer` (normalised text, numbers by value) vs Problem.answer."""

    name = "exact"
    granularity = "response"

    def __init__(self) -> None:
        self.counters: dict[str, int] = {"no_answer": 0}

    def score(self, batch: Sequence[Rollout]) -> list[float]:
        scores = []
        for rollout in batch:
            predicted = extract_answer(rollout.response)
            self.counters["no_answer"] += predicted is None
            scores.append(float(predicted is not None and same_answer(predicted, rollout.problem.answer)))
        return scores


def _parse_math(answer: str, timeout: int | None) -> list:
    # math-verify extracts LaTeX only between anchors; "$...$" lets bare answers like "\frac12" parse.
    return parse(f"${answer}$", parsing_timeout=timeout)


@register
class MathVerifier:
    """Mathematical equivalence of the final answer and Problem.answer, decided by `math-verify`
    (fractions vs decimals, LaTeX forms, sets, intervals, symbolic expressions).

    math-verify's timeouts use SIGALRM, which only the main thread may set; elsewhere it runs without
    a timeout (counted in counters["no_timeout"]).
    """

    name = "math"
    granularity = "response"
    may_hang = True  # symbolic simplification can run for minutes: the trainer bounds each call

    def __init__(self, timeout_s: int = 5) -> None:
        if not isinstance(timeout_s, int) or timeout_s <= 0:
            raise ValueError(f"timeout_s must be a positive int, got {timeout_s!r}")
        self.timeout_s = timeout_s
        self.counters: dict[str, int] = {"no_answer": 0, "unparsed_reference": 0, "no_timeout": 0}

    def score(self, batch: Sequence[Rollout]) -> list[float]:
        main_thread = threading.current_thread() is threading.main_thread()
        timeout = self.timeout_s if main_thread else None
        self.counters["no_timeout"] += 0 if main_thread else len(batch)
        scores = []
        for rollout in batch:
            predicted = extract_answer(rollout.response)
            if predicted is None:
                self.counters["no_answer"] += 1
                scores.append(0.0)
                continue
            gold = _parse_math(rollout.problem.answer, timeout)
            self.counters["unparsed_reference"] += not gold
            equal = verify(gold, _parse_math(predicted, timeout), timeout_seconds=timeout)
            scores.append(float(equal))
        return scores
