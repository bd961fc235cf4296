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


def reward_class(name: str) -> type:
    """The class registered as `name` (imported, not built); ValueError listing the names otherwise."""
    if name not in REWARDS:
        raise ValueError(f"unknown reward {name!r}; choose one of {sorted(REWARDS)}")
    module, cls_name = REWARDS[name]
    return getattr(importlib.import_module(module), cls_name)


def build_reward(name: str, *, call_timeout_s: float | None = None, **options) -> RewardSource:
    """The reward source `name` built with `options` (its constructor's keyword arguments).

    With `call_timeout_s`, a reward whose class sets `may_hang = True` (it runs code that may never
    return) scores each rollout in a worker process that is killed after that many seconds
    (`exprl.rewards.isolated.IsolatedReward`). Unknown names and options raise, listing what is accepted.
    """
    cls = reward_class(name)
    accepted = [p for p in inspect.signature(cls).parameters if p != "self"]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise TypeError(f"reward {name!r} takes no option(s) {unknown}; it takes {accepted}")
    if call_timeout_s is not None and getattr(cls, "may_hang", False):
        from exprl.rewards.isolated import IsolatedReward

        return IsolatedReward(name, options, call_timeout_s)
    return cls(**options)
