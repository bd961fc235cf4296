"""The programmatic judge: grades a response by the reference's key intermediate results (Problem.steps).

A key result is an equation "lhs=rhs" (one per reference step) plus the final answer. A claim in the
response is an equation ("lhs=rhs": lhs before its first "=", rhs after its last) or its final answer
(`extract_answer`). Left-hand sides compare with all whitespace removed; values with `same_answer`
(normalised text, numbers by value). A claim
  * establishes a key result when it has the same lhs and the same value (or is the right final answer;
    one claim establishes one key result, so a step the reference repeats must be stated twice);
  * contradicts it when it has the same lhs and a different value (or is a wrong final answer);
  * supports one when it is neither but its value equals some key result's value (a result restated, or
    reached by another expression).

Outcome mode, with n key results (len(steps) + 1), e of them established and never contradicted:
    k = 1 + floor(4 e / n), then one grade less (never below 1) if any key result is contradicted.
    Full response: k = 5. Empty response: k = 1. With 3 steps (n = 4): two steps then stop: k = 3;
    one right step, then a wrong step and a wrong answer: k = 1 + 1 - 1 = 1.
Process mode, per segment of `split_segments(response, delimiter)`, in this order of precedence:
    1 contradicts a key result;  2 empty;  5 establishes a key result no earlier segment established;
    4 supports (e.g. repeats an established result);  3 otherwise (irrelevant to the reference).
Reward = (k - 1) / 4.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from exprl.data import SEGMENT_DELIMITER
from exprl.rewards.answers import extract_answer, same_answer
from exprl.rewards.base import Rollout
from exprl.rewards.judge import EMPTY_SEGMENT_GRADE, Judge, grade_to_reward
from exprl.rewards.registry import register
from exprl.rewards.segments import split_segments

ANSWER = "Answer"  # the quantity name of the final answer, distinct from any whitespace-free lhs


@dataclass(frozen=True)
class Claim:
    quantity: str  # whitespace-free lhs, or ANSWER
    value: str


def _equations(text: str) -> Iterable[Claim]:
    for line in text.splitlines():
        if "=" in line and extract_answer(line) is None:
            lhs, rhs = line.split("=", 1)[0], line.rsplit("=", 1)[1]
            if "".join(lhs.split()) and rhs.strip():
                yield Claim("".join(lhs.split()), rhs.strip())


def claims(text: str, delimiter: str) -> list[Claim]:
    """The equations of every segment (and line) of `text`, then its final answer if it has one."""
    found = [claim for segment in split_segments(text, delimiter) for claim in _equations(segment)]
    answer = extract_answer(text)
    return found + ([Claim(ANSWER, answer)] if answer is not None else [])


def key_results(problem, delimiter: str = SEGMENT_DELIMITER) -> list[Claim]:
    """Problem.steps as claims (or, when a problem lists none, the reference's equations), then the answer."""
    steps = [claim for step in problem.steps for claim in _equations(step)]
    if not steps and problem.reference:
        steps = [claim for claim in claims(problem.reference, delimiter) if claim.quantity != ANSWER]
    return steps + [Claim(ANSWER, problem.answer)]


def _matches(claim: Claim, keys: Sequence[Claim], same_value: bool) -> set[int]:
    return {
        i
        for i, key in enumerate(keys)
        if key.quantity == claim.quantity and same_answer(claim.value, key.value) == same_value
    }


def _establish(said: Sequence[Claim], keys: Sequence[Claim], established: set[int]) -> set[int]:
    """Key results newly established by `said`: each claim establishes at most one, the first it matches
    that is not yet established (a reference may repeat a step; saying it once earns it once)."""
    new: set[int] = set()
    for claim in said:
        free = sorted(_matches(claim, keys, True) - established - new)
        new |= set(free[:1])
    return new


def outcome_grade(response: str, keys: Sequence[Claim], delimiter: str) -> int:
    said = claims(response, delimiter)
    established = _establish(said, keys, set())
    contradicted = set().union(*(_matches(c, keys, False) for c in said))
    grade = 1 + (4 * len(established - contradicted)) // len(keys)
    return max(1, grade - 1) if contradicted else grade


def process_grades(response: str, keys: Sequence[Claim], delimiter: str) -> list[int]:
    key_values = [key.value for key in keys]
    grades, established = [], set()
    for segment in split_segments(response, delimiter):
        said = claims(segment, delimiter)
        new = _establish(said, keys, established)
        if any(_matches(c, keys, False) for c in said):
            grades.append(1)
        elif not segment:
            grades.append(EMPTY_SEGMENT_GRADE)
        elif new:
            grades.append(5)
        elif any(same_answer(c.value, v) for c in said for v in key_values):
            grades.append(4)
        else:
            grades.append(3)
        established |= new
    return grades


@register
class RubricJudge(Judge):
    """Grades against the reference's key results, as the module docstring defines; needs no model."""

    name = "rubric"

    def score(self, batch: Sequence[Rollout]) -> list[float | list[float]]:
        scores = []
        for rollout in batch:
            keys = key_results(rollout.problem, self.delimiter)
            if self.mode == "outcome":
                scores.append(grade_to_reward(outcome_grade(rollout.response, keys, self.delimiter)))
            else:
                scores.append(
                    [grade_to_reward(k) for k in process_grades(rollout.response, keys, self.delimiter)]
                )
        return scores
