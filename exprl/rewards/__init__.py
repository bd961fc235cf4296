"""Rewards: sparse verifiers (exact, math, user Python functions) and reference-guided judges (rubric,
local HF model, HTTP endpoint), in outcome and process modes, behind one `score(batch)` interface.

    reward = build_reward("rubric", mode="process")
    scores = reward.score([Rollout(problem, response)])   # per rollout: float, per-segment list, or None
"""

from exprl.rewards.answers import extract_answer
from exprl.rewards.base import RewardSource, Rollout
from exprl.rewards.registry import REWARDS, build_reward
from exprl.rewards.segments import split_segments, token_segment_ids

__all__ = [
    "REWARDS",
    "RewardSource",
    "Rollout",
    "build_reward",
    "extract_answer",
    "split_segments",
    "token_segment_ids",
]
