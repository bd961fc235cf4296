"""Reward sources by name, as the trainer's config names them: build_reward("rubric", mode="process").

A reward source is a class that implements `RewardSource` and is decorated with `@register`, which files
it under its `name` attribute. `REWARDS` is the only list of names: config validation, `exprl eval` and
the trainer ask it. The built-in modules of this package are imported on the first lookup (so their
decorators have run), which keeps `import exprl.rewards` free of model and HTTP libraries.

A judge (a subclass of `exprl.rewards.judge.Judge`) grades against the reference in a mode, "outcome" or
"process", at a delimiter, a process grade seeing one segment or its prefix (`process_context`);
`is_judge(name)` says whether a source takes them.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from pathlib import Path

from exprl.rewards.base import RewardSource
from exprl.rewards.judge import Judge

REWARDS: dict[str, type[RewardSource]] = {}


def register(cls: type) -> type:
    """Class decorator: add `cls` to `REWARDS` under `cls.name`; a name registered twice is a ValueError."""
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise TypeError(
            f"a reward source needs a non-empty str class attribute `name`, {cls.__qualname__} has none"
        )
    if name in REWARDS:
        other = REWARDS[name]
        raise ValueError(
            f"reward {name!r} is already registered ({other.__module__}.{other.__qualname__}); "
            f"cannot register {cls.__module__}.{cls.__qualname__} under the same name"
        )
    REWARDS[name] = cls
    return cls


def _import_builtin() -> None:
    """Import every module of `exprl.rewards` once, so that their `@register` decorators have run."""
    for module in pkgutil.iter_modules([str(Path(__file__).parent)]):
        importlib.import_module(f"{__package__}.{module.name}")


def reward_names() -> list[str]:
    """The registered reward names, sorted."""
    _import_builtin()
    return sorted(REWARDS)


def reward_class(name: str) -> type[RewardSource]:
    """The class registered as `name`; ValueError listing the registered names when there is none."""
    _import_builtin()
    if name not in REWARDS:
        raise ValueError(f"unknown reward {name!r}; choose one of {', '.join(sorted(REWARDS))}")
    return REWARDS[name]


def is_judge(name: str) -> bool:
    """Whether the reward `name` is a judge: it takes `mode` and `delimiter` and can grade per segment."""
    return issubclass(reward_class(name), Judge)


def reward_options(name: str) -> list[str]:
    """The keyword arguments the constructor of reward `name` accepts."""
    return [p for p in inspect.signature(reward_class(name)).parameters if p != "self"]


def required_options(name: str) -> list[str]:
    """The constructor arguments of reward `name` that have no default."""
    params = inspect.signature(reward_class(name)).parameters.values()
    return [p.name for p in params if p.name != "self" and p.default is p.empty]


def build_reward(name: str, *, call_timeout_s: float | None = None, **options) -> RewardSource:
    """The reward source `name` built with `options` (its constructor's keyword arguments).

    With `call_timeout_s`, a reward whose class sets `may_hang = True` (it runs code that may never
    return) scores each rollout in a worker process that is killed after that many seconds
    (`exprl.rewards.isolated.IsolatedReward`). Unknown names and options raise, listing what is accepted.
    """
    accepted = reward_options(name)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise TypeError(f"reward {name!r} takes no option(s) {unknown}; it takes {accepted}")
    cls = reward_class(name)
    if call_timeout_s is not None and getattr(cls, "may_hang", False):
        from exprl.rewards.isolated import IsolatedReward

        return IsolatedReward(cls, options, call_timeout_s)
    return cls(**options)
