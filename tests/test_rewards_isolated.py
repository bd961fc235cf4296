"""Rewards that may never return run in a worker process: a call past its time limit is killed and its
rollout dropped (None, counted), while scores, counters and errors come back as if run in-process."""

import time

import pytest

from exprl.data import Problem, load_problems
from exprl.rewards import Rollout, build_reward
from exprl.rewards.isolated import IsolatedReward
from exprl.rewards.user_function import PythonReward

USER_FILE = """
import time

def reward(problem, response):
    print("graded", response)  # a user's print must not disturb the worker's replies
    if response == "hang":
        time.sleep(3600)
    if response == "none":
        return None
    if response == "raise":
        raise KeyError("rubric")
    if response == "big":
        return 2.0
    return len(response) / 10
"""


@pytest.fixture
def spec(tmp_path):
    path = tmp_path / "user_reward.py"
    path.write_text(USER_FILE)
    return f"{path}:reward"


def rollouts(*responses):
    problem = load_problems("builtin:all:1:train:1")[0]
    return [Rollout(problem, r) for r in responses]


def test_a_hung_call_is_killed_and_dropped_and_the_next_call_is_served(spec):
    reward = build_reward("python", call_timeout_s=1.0, path=spec)
    assert isinstance(reward, IsolatedReward)
    start = time.monotonic()
    assert reward.score(rollouts("abc", "hang", "abcde")) == [0.3, None, 0.5]
    assert time.monotonic() - start < 60  # bounded by the time limit, not by time.sleep(3600)
    assert reward.counters["timeout"] == 1
    assert "did not return within reward.timeout_s=1 s on problem" in reward.first_failure


def test_counters_of_the_reward_come_back(spec):
    reward = build_reward("python", call_timeout_s=30.0, path=spec)
    assert reward.score(rollouts("none", "ab", "none")) == [None, 0.2, None]
    assert reward.counters == {"timeout": 0, "ungraded": 2}
    assert (reward.name, reward.granularity) == ("python", "response")


@pytest.mark.parametrize(
    ("response", "error", "message"),
    [("raise", RuntimeError, r"user_reward\.py:reward' raised on problem"), ("big", ValueError, "outside")],
)
def test_errors_of_the_reward_are_raised_with_their_type(spec, response, error, message):
    reward = build_reward("python", call_timeout_s=30.0, path=spec)
    with pytest.raises(error, match=message):
        reward.score(rollouts(response))
    assert reward.score(rollouts("a")) == [0.1]  # the worker goes on serving


def test_build_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.py"):
        build_reward("python", call_timeout_s=5.0, path=f"{tmp_path}/missing.py:f")


def test_only_rewards_that_may_hang_are_isolated(spec):
    assert isinstance(build_reward("python", path=spec), PythonReward)  # no time limit: in-process
    assert type(build_reward("exact", call_timeout_s=1.0)).__name__ == "ExactVerifier"
    math = build_reward("math", call_timeout_s=30.0)
    assert isinstance(math, IsolatedReward)
    half = Problem(id="half", prompt="1/2 as a decimal?", answer="\\frac{1}{2}")
    assert math.score([Rollout(half, "Answer: 0.5"), Rollout(half, "Answer: 0.25")]) == [1.0, 0.0]
