"""The one interface every reward source implements: score a batch of rollouts."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

if TYPE_CHECKING:
    from exprl.data import Problem

Granularity = Literal["response", "segment"]
Score = float | list[float] | None


@dataclass
class Rollout:
    """One policy completion to grade. `problem` carries the hidden reference, steps and answer."""

    problem: Problem
    response: str
    truncated: bool = False


@runtime_checkable
class RewardSource(Protocol):
    """Grades rollouts.

    `score` returns one entry per rollout: a float in [0, 1] when `granularity == "response"`,
    a list of floats in [0, 1] (one per segment of `split_segments(response, delimiter)`) when
    `granularity == "segment"`, or None when the rollout could not be graded (the trainer drops it).
    `counters` accumulates, over the source's lifetime, why grades were missing (e.g. "unparsed").
    Optional: `informational_counters` names the counters that are not a cause of a missing grade
    (e.g. "requests"), and `first_failure` describes the first missing grade (e.g. the URL and status).
    """

    name: str
    granularity: Granularity
    counters: dict[str, int]

    def score(self, batch: Sequence[Rollout]) -> list[Score]: ...
