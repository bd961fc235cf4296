"""The reward registry: the one list of reward names, duplicate names, and what it says about judges."""

import pytest

from exprl.rewards import Rollout, build_reward, is_judge, register, reward_names
from exprl.rewards.judge import Judge
from exprl.rewards.registry import REWARDS


@pytest.fixture
def registered(monkeypatch):
    """Register classes for one test only: REWARDS is restored afterwards."""
    monkeypatch.setattr("exprl.rewards.registry.REWARDS", dict(REWARDS))
    return register


def test_registry_names():
    assert reward_names() == ["exact", "hf", "http", "math", "python", "rubric"]


def test_judges_are_the_sources_that_take_a_mode():
    assert [name for name in reward_names() if is_judge(name)] == ["hf", "http", "rubric"]


def test_build_reward_rejects_unknown_names_and_options():
    with pytest.raises(ValueError, match="unknown reward 'bleu'"):
        build_reward("bleu")
    with pytest.raises(TypeError, match="'rubric' takes no option.*'temperature'"):
        build_reward("rubric", temperature=0.5)
    with pytest.raises(ValueError, match="mode"):
        build_reward("rubric", mode="final")
    with pytest.raises(ValueError, match="delimiter"):
        build_reward("rubric", delimiter="")


def test_registering_a_taken_name_is_an_error(registered):
    class AnotherExact:
        name = "exact"

    with pytest.raises(
        ValueError, match=r"'exact' is already registered \(exprl\.rewards\.verifiers\.ExactVerifier"
    ):
        registered(AnotherExact)
    with pytest.raises(TypeError, match="`name`, NoName has none"):
        registered(type("NoName", (), {}))


def test_a_judge_registered_in_one_place_is_built_by_name_with_its_mode(registered):
    @registered
    class LengthJudge(Judge):
        """Grades each segment by its length (at most 10 characters = 1.0)."""

        name = "length"

        def score(self, batch):
            if self.mode == "outcome":
                return [min(len(r.response), 10) / 10 for r in batch]
            return [[min(len(s), 10) / 10 for s in r.response.split(self.delimiter)] for r in batch]

    assert "length" in reward_names() and is_judge("length")
    judge = build_reward("length", mode="process", delimiter="|")
    assert judge.score([Rollout(None, "abcde|" + "x" * 12)]) == [[0.5, 1.0]]
