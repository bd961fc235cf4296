"""The rubric judge gives the grades its docstring defines (reward = (k - 1) / 4), checked by hand and
against an independent grader written here from the prompts' scale (exprl.rewards.prompts).

Problem: (17+5)*3-4 with the intermediate key results 17+5=22, 22*3=66, 66-4=62 and the answer 62.
"""

import random

import pytest

from exprl.data import Problem, builtin_problems
from exprl.rewards import Rollout, build_reward

CHAIN = Problem(
    id="chain/test/0",
    prompt="Q: (17+5)*3-4\nA: ",
    answer="62",
    reference="17+5=22 ### 22*3=66 ### 66-4=62 ### Answer: 62",
    steps=("17+5=22", "22*3=66", "66-4=62"),
)


def reward(k: int) -> float:
    return (k - 1) / 4


def outcome(response: str, problem: Problem = CHAIN) -> float:
    return build_reward("rubric").score([Rollout(problem, response)])[0]


def process(response: str, problem: Problem = CHAIN, context: str = "segment") -> list[float]:
    judge = build_reward("rubric", mode="process", process_context=context)
    return judge.score([Rollout(problem, response)])[0]


@pytest.mark.parametrize(
    "response, grade",
    [
        ("17+5=22 ### 22*3=66 ### 66-4=62 ### Answer: 62", 5),  # correct and sufficient
        ("17 + 5 = 22 ###22 * 3 = 66###  66 - 4 = 62 ### Answer: 62.0", 5),  # other spacing
        ("Answer: 62", 5),  # the right result, nothing contradicted
        ("17+5=22 ### 22*3=66 ### 66-4=62", 4),  # the whole path, no answer written
        ("17+5=22 ### 22*3=66 ### 66-4=62 ### Answer: 61", 4),  # the whole path, a slip at the end
        ("17+5=22 ### 22*3=66", 3),  # on the right track, incomplete
        ("17+5=22 ### 22*3=67 ### 67-4=63 ### Answer: 63", 3),  # partial credit for a wrong answer
        ("17+5=23 ### Answer: 62", 3),  # the right answer despite an error
        ("22*3=66 ### 22*3=65", 1),  # established then contradicted: no credit, and contradicted
        ("I like cats. 2+2=4", 2),  # irrelevant, contradicts nothing
        ("Answer: 61", 1),  # contradicts the reference
        ("", 1),  # empty
    ],
)
def test_outcome_grades(response, grade):
    assert outcome(response) == reward(grade)


@pytest.mark.parametrize(
    "response, grades",
    [
        ("17+5=22 ### 22*3=66 ### 66-4=62 ### Answer: 62", [5, 5, 5, 5]),
        ("17+5=22 ### 17+5=22 ### 22*3=66", [5, 5, 5]),  # alone, a repeat still establishes
        ("17+5=22 ### 3*22=66 ### Answer: 62", [5, 4, 5]),  # 66 reached by another expression: supports
        ("17+5=22 ### 22*3=67 ### Answer: 63", [5, 1, 1]),  # contradictions
        ("17+5=22 ###  ### hmm, let me think ### x=7", [5, 2, 2, 3]),  # empty, no claim, a generic claim
        ("17+5=22 ### 22*3=66 ###", [5, 5, 2]),  # trailing delimiter: an empty last segment
        ("", [2]),
    ],
)
def test_process_grades_each_segment_alone(response, grades):
    assert process(response) == [reward(k) for k in grades]


def test_process_prefix_context_credits_a_result_once():
    assert process("17+5=22 ### 17+5=22 ### 22*3=66", context="prefix") == [reward(5), reward(4), reward(5)]
    with pytest.raises(ValueError, match="process_context"):
        build_reward("rubric", mode="process", process_context="all")


def test_process_mode_honours_the_delimiter():
    judge = build_reward("rubric", mode="process", delimiter="\n")
    assert judge.granularity == "segment"
    assert judge.score([Rollout(CHAIN, "17+5=22\n22*3=66")]) == [[reward(5), reward(5)]]


def test_key_results_come_from_the_reference_when_a_problem_lists_no_steps():
    loaded = Problem(id="jsonl/0", prompt="Q", answer="62", reference=CHAIN.reference)
    assert outcome("17+5=22 ### 22*3=66", loaded) == reward(3)
    bare = Problem(id="jsonl/1", prompt="Q", answer="62")  # only the answer is a key result
    assert outcome("Answer: 62", bare) == reward(5)
    assert outcome("Answer: 6", bare) == reward(1)
    assert outcome("62 it is", bare) == reward(2)  # no step to reach: no 4 for a bare problem


def test_every_builtin_reference_gets_full_marks():
    problems = builtin_problems(None, 4, "train", 12, seed=3) + builtin_problems(None, 2, "ood", 8, seed=4)
    batch = [Rollout(p, p.reference) for p in problems]
    assert build_reward("rubric").score(batch) == [1.0] * len(batch)
    per_segment = build_reward("rubric", mode="process").score(batch)
    assert per_segment == [[1.0] * (len(p.steps) + 1) for p in problems]


def test_a_step_the_reference_repeats_must_be_stated_twice():
    twice = Problem(id="add/0", prompt="Q", answer="1", steps=("3+6+1=10", "3+6+1=10"))
    assert outcome("3+6+1=10", twice) == reward(3)
    assert outcome("3+6+1=10 ### 3+6+1=10", twice) == reward(4)


# An independent grader: the scale of the prompts, read off the text with plain string handling, for
# problems whose steps have distinct left-hand sides and integer values.


def _claims(segment: str) -> tuple[list[tuple[str, int]], int | None]:
    equations, answer = [], None
    for line in segment.splitlines():
        if line.strip().lower().startswith("answer:"):
            answer = int(line.split(":", 1)[1])
        elif "=" in line:
            left, right = line.split("=")
            equations.append((left.replace(" ", ""), int(right)))
    return equations, answer


def independent_outcome(problem: Problem, response: str) -> int:
    keys = dict(step.replace(" ", "").split("=") for step in problem.steps)
    keys = {lhs: int(value) for lhs, value in keys.items()}
    said, answer = [], None
    for segment in response.split("###"):
        equations, segment_answer = _claims(segment)
        said += equations
        answer = segment_answer if segment_answer is not None else answer
    right = [lhs for lhs, v in said if keys.get(lhs) == v]
    wrong = [lhs for lhs, v in said if lhs in keys and keys[lhs] != v]
    clean = set(right) - set(wrong)
    contradicted = bool(wrong) or (answer is not None and answer != int(problem.answer))
    if answer == int(problem.answer) and not contradicted:
        return 5
    if clean == set(keys):
        return 4
    if clean or answer == int(problem.answer):
        return 3
    return 1 if contradicted or not response.strip() else 2


def independent_process(problem: Problem, response: str) -> list[int]:
    keys = {s.replace(" ", "").split("=")[0]: int(s.split("=")[1]) for s in problem.steps}
    values = set(keys.values()) | {int(problem.answer)}
    grades = []
    for segment in response.split("###"):
        equations, answer = _claims(segment)
        if any(lhs in keys and keys[lhs] != v for lhs, v in equations) or answer not in (
            None,
            int(problem.answer),
        ):
            grades.append(1)
        elif any(keys.get(lhs) == v for lhs, v in equations) or answer is not None:
            grades.append(5)
        elif any(v in values for _, v in equations):
            grades.append(4)
        else:
            grades.append(3 if equations else 2)
    return grades


def perturbed_responses(problem: Problem, rng: random.Random, n: int) -> list[str]:
    """Responses built from the reference: steps dropped, values changed, answers wrong or missing,
    generic claims and filler inserted, order shuffled."""
    out = []
    for _ in range(n):
        if rng.random() < 0.1:  # nothing but filler
            out.append(rng.choice(["let me think", "t=100 ### hmm", "### ###"]))
            continue
        segments = []
        for step in problem.steps:
            lhs, value = step.split("=")
            roll = rng.random()
            if roll < 0.25:
                continue
            segments.append(f"{lhs}={int(value) + rng.choice([-1, 1])}" if roll < 0.4 else step)
            if rng.random() < 0.15:
                segments.append(rng.choice(["let me think", f"t={rng.randint(1, 99)}", ""]))
        if rng.random() < 0.3:
            rng.shuffle(segments)
        roll = rng.random()
        if roll < 0.4:
            segments.append(f"Answer: {problem.answer}")
        elif roll < 0.7:
            segments.append(f"Answer: {int(problem.answer) + rng.randint(1, 5)}")
        out.append(" ### ".join(segments))
    return out


def test_rubric_agrees_with_an_independent_grader():
    rng = random.Random(0)
    problems = [
        p
        for family in ("chain", "add")
        for p in builtin_problems(family, 3, "train", 12, seed=1)
        if len({s.split("=")[0] for s in p.steps}) == len(p.steps)
    ]
    assert len(problems) >= 12
    outcome_judge = build_reward("rubric")
    process_judge = build_reward("rubric", mode="process")
    seen = set()
    for problem in problems:
        responses = perturbed_responses(problem, rng, 25)
        batch = [Rollout(problem, r) for r in responses]
        got = outcome_judge.score(batch)
        assert got == [reward(independent_outcome(problem, r)) for r in responses]
        seen |= {round(g * 4) + 1 for g in got}
        assert process_judge.score(batch) == [
            [reward(k) for k in independent_process(problem, r)] for r in responses
        ]
    assert seen == {1, 2, 3, 4, 5}  # the perturbations exercise every grade
