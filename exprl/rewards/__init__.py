"""Rewards: sparse verifiers (exact, math, user Python functions) and reference-guided judges (rubric,
local HF model, HTTP endpoint), in outcome and process modes, behind one `score(batch)` interface.

    reward = build_reward("rubric", mode="process")
    scores = reward.score([Rollout(problem, response)])   # per rollout: float, per-segment list, or None

A new source is a class decorated with `@register` in a module of this package (see registry.py).
"""

from exprl.rewards.answers import extract_answer
from exprl.rewards.base import RewardSource, Rollout
from exprl.rewards.registry import (
    build_reward,
    is_judge,
    register,
    required_options,
    reward_names,
    reward_options,
)
from exprl.rewards.segments import split_segments, token_segment_ids

__all__ = [
    "RewardSource",
    "Rollout",
    "build_reward",
    "is_judge",
    "register",
    "required_options",
    "reward_names",
    "reward_options",
    "extract_answer",
    "split_segments",
    "token_segment_ids",
]
