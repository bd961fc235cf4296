"""Reward sources by name, as the trainer's config names them: build_reward("rubric", mode="process")."""

from __future__ import annotations

import importlib
import inspect

from exprl.rewards.base import RewardSource

# name -> (module, class). Imported on use, so "exact" never pays for loading torch models or requests.
REWARDS: dict[str, tuple[str, str]] = {
    "exact": ("exprl.rewards.verifiers", "ExactVerifier"),
    "math": ("exprl.rewards.verifiers", "MathVerifier"),
    "python": ("exprl.rewards.user_function", "PythonReward"),
    "rubric": ("exprl.rewards.rubric", "RubricJudge"),
    "hf": ("exprl.rewards.hf_judge", "HFJudge"),
    "http": ("exprl.rewards.http_judge", "HTTPJudge"),
}


def build_reward(name: str, **options) -> RewardSource:
    """The reward source `name` built with `options` (its constructor's keyword arguments).

    Unknown names and options raise, listing what is accepted.
    """
    if name not in REWARDS:
        raise ValueError(f"unknown reward {name!r}; choose one of {sorted(REWARDS)}")
    module, cls_name = REWARDS[name]
    cls = getattr(importlib.import_module(module), cls_name)
    accepted = [p for p in inspect.signature(cls).parameters if p != "self"]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise TypeError(f"reward {name!r} takes no option(s) {unknown}; it takes {accepted}")
    return cls(**options)
