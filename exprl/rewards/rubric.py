"""The programmatic judge: grades a response by the reference's key results (Problem.steps), on the
scale of the model judges' prompts (exprl.rewards.prompts).

A key result is an equation "lhs=rhs" (one per reference step) or the final answer. A claim in the
response is an equation ("lhs=rhs": lhs before its first "=", rhs after its last) or its final answer
(`extract_answer`). Left-hand sides compare with all whitespace removed; values with `same_answer`
(normalised text, numbers by value). A claim
  * establishes a key result when it has the same lhs and the same value (or is the right final answer;
    one claim establishes one key result, so a step the reference repeats must be stated twice);
  * contradicts it when it has the same lhs and a different value (or is a wrong final answer);
  * supports one when it is neither but its value equals some key result's value (a result restated, or
    reached by another expression).

Outcome mode (how likely the reasoning leads to the reference's result), first rule that holds:
    5  the right final answer, and no key result contradicted (correct and sufficient);
    4  every intermediate key result established (there is at least one), but the answer is missing or
       wrong, or something is contradicted (a correct path with a slip at the end);
    3  some intermediate key result established, or the right answer despite a contradiction (on the
       right track, incomplete or with errors): a wrong-answer trace still earns partial credit;
    2  nothing established and nothing contradicted (irrelevant, or too little);
    1  nothing established and something contradicted, or an empty response.
Process mode, per segment of `split_segments(response, delimiter)`, first rule that holds:
    1  contradicts a key result;
    5  establishes a key result (context "segment", as published: any key result, since the segment is
       graded alone; context "prefix": one that no earlier segment established);
    4  supports a key result (context "prefix": also restating one established earlier);
    3  makes claims, none tied to a key result (weak or generic);
    2  makes no claim at all (empty, or words without a result: mostly irrelevant).
Reward = (k - 1) / 4.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from exprl.data import SEGMENT_DELIMITER
from exprl.rewards.answers import extract_answer, same_answer
from exprl.rewards.base import Rollout
from exprl.rewards.judge import Judge, grade_to_reward
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
    steps = {i for i, key in enumerate(keys) if key.quantity != ANSWER}
    right_answer = bool(established - steps)
    reached = (established & steps) - contradicted
    if right_answer and not contradicted:
        return 5
    if steps and reached == steps:
        return 4
    if reached or right_answer:
        return 3
    return 1 if contradicted or not said and not response.strip() else 2


def process_grades(response: str, keys: Sequence[Claim], delimiter: str, context: str) -> list[int]:
    key_values = [key.value for key in keys]
    grades, established = [], set()
    for segment in split_segments(response, delimiter):
        said = claims(segment, delimiter)
        new = _establish(said, keys, established if context == "prefix" else set())
        if any(_matches(c, keys, False) for c in said):
            grades.append(1)
        elif new:
            grades.append(5)
        elif any(same_answer(c.value, v) for c in said for v in key_values):
            grades.append(4)
        else:
            grades.append(3 if said else 2)
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
                    [
                        grade_to_reward(k)
                        for k in process_grades(rollout.response, keys, self.delimiter, self.process_context)
                    ]
                )
        return scores
