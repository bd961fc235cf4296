"""What every model judge shares: the prompts, "Score: k" parsing on crafted outputs, and the
prompt -> grade -> reward pipeline (missing and unparsable outputs become None plus a counter)."""

import pytest

from exprl.data import Problem
from exprl.rewards import Rollout
from exprl.rewards.judge import ModelJudge
from exprl.rewards.prompts import outcome_messages, parse_score, process_messages

PROBLEM = Problem(
    id="chain/0",
    prompt="Q: (17+5)*3-4\nA: ",
    answer="62",
    reference="17+5=22 ### 22*3=66 ### 66-4=62 ### Answer: 62",
    steps=("17+5=22", "22*3=66", "66-4=62"),
)


@pytest.mark.parametrize(
    "output, grade",
    [
        ("The student establishes 17+5=22.\nScore: 4", 4),
        ("Score: 2\nOn reflection...\nScore: 5", 5),  # the last one counts
        ("**Score:** 3", 3),
        ("Score: **1**", 1),
        ("score = 2/5", 2),
        ("Score: 4.0", 4),
        ("SCORE:5", 5),
        ("Score: 0", None),
        ("Score: 6", None),
        ("Score: 3.5", None),
        ("I would give it a four.", None),
        ("Score:", None),
        ("", None),
    ],
)
def test_parse_score(output, grade):
    assert parse_score(output) == grade


def test_outcome_prompt_shows_reference_and_response_and_asks_for_a_score():
    system, user = outcome_messages(PROBLEM, "17+5=22 ### Answer: 22", "###")
    assert system["role"] == "system" and user["role"] == "user"
    assert "do not solve the problem yourself" in system["content"]
    assert "Score: k" in system["content"]
    for part in ("(17+5)*3-4", PROBLEM.reference, "Reference final answer: 62", "17+5=22 ### Answer: 22"):
        assert part in user["content"]
    # the published scale: 5 correct and sufficient, 3 on the right track, 1 contradicts
    for grade in (
        "5 = the reasoning is correct and sufficient",
        "3 = the reasoning is on the right track",
        "1 = the reasoning contradicts the reference",
    ):
        assert grade in user["content"]


def test_process_prompt_shows_the_step_alone_by_default():
    _, user = process_messages(PROBLEM, ["17+5=22", "22*3=66"], "66-4=61", "###")
    content = user["content"]
    assert "key checkpoints" in content and "NOT shown" in content
    for grade in (
        "5 = it establishes a checkpoint",
        "4 = it supports a checkpoint",
        "3 = it is weak or generic",
        "2 = it is mostly irrelevant",
        "1 = it contradicts a checkpoint",
    ):
        assert grade in content
    assert "22*3=66" not in content.replace(PROBLEM.reference, "") and "66-4=61" in content


def test_process_prompt_with_prefix_context_shows_earlier_steps():
    _, user = process_messages(PROBLEM, ["17+5=22", "22*3=66"], "66-4=61", "###", "prefix")
    content = user["content"]
    earlier = content.index("Student's earlier steps")
    current = content.index("Student's current step")
    assert earlier < content.index("17+5=22\n22*3=66") < current < content.index("66-4=61")
    with pytest.raises(ValueError, match="process_context"):
        process_messages(PROBLEM, [], "x", "###", "whole")


class CannedJudge(ModelJudge):
    """A judge whose "model" returns prepared completions, in request order."""

    def __init__(self, completions, **options):
        super().__init__(**options)
        self.completions = list(completions)
        self.seen = []

    def complete(self, conversations):
        self.seen += conversations
        n = len(conversations)
        answered, self.completions = self.completions[:n], self.completions[n:]
        return answered


def rollouts(*responses):
    return [Rollout(PROBLEM, r) for r in responses]


def test_outcome_rewards_are_grade_minus_one_over_four():
    judge = CannedJudge(["Score: 5", "Score: 1", "Score: 3"])
    assert judge.granularity == "response"
    assert judge.score(rollouts("a", "b", "c")) == [1.0, 0.0, 0.5]
    assert judge.counters == {"requests": 3, "unparsed": 0, "ungraded": 0}


def test_unparsable_and_missing_outputs_leave_the_rollout_ungraded():
    judge = CannedJudge(["Score: 4", "no grade here", None])
    assert judge.score(rollouts("a", "b", "c")) == [0.75, None, None]
    assert judge.counters == {"requests": 3, "unparsed": 1, "ungraded": 2}


def test_an_empty_response_gets_grade_one_without_a_request():
    judge = CannedJudge(["Score: 5"])
    assert judge.score(rollouts("  ", "a")) == [0.0, 1.0]
    assert len(judge.seen) == 1


def test_process_mode_grades_every_segment_and_empty_ones_without_a_request():
    judge = CannedJudge(["Score: 5", "Score: 3", "Score: 1", "Score: 4"], mode="process")
    assert judge.granularity == "segment"
    scores = judge.score(rollouts("17+5=22 ### ### 22*3=67", "Answer: 62"))
    assert scores == [[1.0, 0.25, 0.5], [0.0]]
    assert len(judge.seen) == 3  # the empty middle segment was not sent
    last_step = judge.seen[1][1]["content"]  # the prompt for "22*3=67": the step alone, by default
    assert "17+5=22" not in last_step.replace(PROBLEM.reference, "") and "22*3=67" in last_step
    prefix = CannedJudge(["Score: 5", "Score: 3", "Score: 1"], mode="process", process_context="prefix")
    prefix.score(rollouts("17+5=22 ### ### 22*3=67"))
    last_step = prefix.seen[1][1]["content"]  # lists the empty step among the earlier ones
    assert "Student's earlier steps (context only, do not grade them):\n17+5=22\n\n" in last_step


def test_process_mode_drops_a_rollout_when_any_segment_is_ungraded():
    judge = CannedJudge(["Score: 5", "Score: 9", "Score: 2"], mode="process")
    assert judge.score(rollouts("a ### b", "c")) == [None, [0.25]]
    assert judge.counters["unparsed"] == 1 and judge.counters["ungraded"] == 1


def test_a_backend_returning_the_wrong_number_of_outputs_is_a_bug():
    with pytest.raises(RuntimeError, match="1 outputs for 2 prompts"):
        CannedJudge(["Score: 5"]).score(rollouts("a", "b"))
