"""The rubric judge gives the grades its docstring defines (reward = (k - 1) / 4).

Problem: (17+5)*3-4 with key results 17+5=22, 22*3=66, 66-4=62 and the answer 62 (n = 4), so in
outcome mode k = 1 + floor(4 e / 4) = 1 + e for e established results, one less if any is contradicted.
"""

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


def process(response: str, problem: Problem = CHAIN) -> list[float]:
    return build_reward("rubric", mode="process").score([Rollout(problem, response)])[0]


@pytest.mark.parametrize(
    "response, grade",
    [
        ("17+5=22 ### 22*3=66 ### 66-4=62 ### Answer: 62", 5),  # full
        ("17 + 5 = 22 ###22 * 3 = 66###  66 - 4 = 62 ### Answer: 62.0", 5),  # full, other spacing
        ("17+5=22 ### 22*3=66", 3),  # partial: 2 of 4
        ("17+5=22", 2),  # partial: 1 of 4
        ("Answer: 62", 2),  # the answer alone is one key result
        ("17+5=22 ### 22*3=67 ### 67-4=63 ### Answer: 63", 1),  # 1 established, contradicted: 2 - 1
        ("17+5=22 ### 22*3=66 ### 66-4=62 ### Answer: 61", 3),  # 3 established, wrong answer: 4 - 1
        ("22*3=66 ### 22*3=65", 1),  # established then contradicted: no credit, and contradicted
        ("", 1),  # empty
        ("I like cats. 2+2=4", 1),  # irrelevant
    ],
)
def test_outcome_grades(response, grade):
    assert outcome(response) == reward(grade)


@pytest.mark.parametrize(
    "response, grades",
    [
        ("17+5=22 ### 22*3=66 ### 66-4=62 ### Answer: 62", [5, 5, 5, 5]),
        ("17+5=22 ### 17+5=22 ### 22*3=66", [5, 4, 5]),  # a repeat supports, it does not establish
        ("17+5=22 ### 3*22=66 ### Answer: 62", [5, 4, 5]),  # 66 reached by another expression
        ("17+5=22 ### 22*3=67 ### Answer: 63", [5, 1, 1]),  # contradictions
        ("17+5=22 ###  ### hmm, let me think ### Answer: 62", [5, 2, 3, 5]),  # empty, irrelevant
        ("17+5=22 ### 22*3=66 ###", [5, 5, 2]),  # trailing delimiter: an empty last segment
        ("", [2]),
    ],
)
def test_process_grades(response, grades):
    assert process(response) == [reward(k) for k in grades]


def test_process_mode_honours_the_delimiter():
    judge = build_reward("rubric", mode="process", delimiter="\n")
    assert judge.granularity == "segment"
    assert judge.score([Rollout(CHAIN, "17+5=22\n22*3=66")]) == [[reward(5), reward(5)]]


def test_key_results_come_from_the_reference_when_a_problem_lists_no_steps():
    loaded = Problem(id="jsonl/0", prompt="Q", answer="62", reference=CHAIN.reference)
    assert outcome("17+5=22 ### 22*3=66", loaded) == reward(3)
    bare = Problem(id="jsonl/1", prompt="Q", answer="62")  # only the answer is a key result: n = 1
    assert outcome("Answer: 62", bare) == reward(5)
    assert outcome("Answer: 6", bare) == reward(1)


def test_every_builtin_reference_gets_full_marks():
    problems = builtin_problems(None, 4, "train", 12, seed=3) + builtin_problems(None, 2, "ood", 8, seed=4)
    batch = [Rollout(p, p.reference) for p in problems]
    assert build_reward("rubric").score(batch) == [1.0] * len(batch)
    per_segment = build_reward("rubric", mode="process").score(batch)
    assert per_segment == [[1.0] * (len(p.steps) + 1) for p in problems]


def test_a_step_the_reference_repeats_must_be_stated_twice():
    twice = Problem(id="add/0", prompt="Q", answer="1", steps=("3+6+1=10", "3+6+1=10"))  # n = 3
    assert outcome("3+6+1=10", twice) == reward(1 + (4 * 1) // 3)
    assert outcome("3+6+1=10 ### 3+6+1=10", twice) == reward(1 + (4 * 2) // 3)
    assert process("3+6+1=10 ### 3+6+1=10 ### 3+6+1=10", twice) == [reward(5), reward(5), reward(4)]
