"""User-defined reward functions loaded from a file, as OpenRLHF and verl users write them."""

from __future__ import annotations

import importlib.util
import math
import numbers
import pathlib
from collections.abc import Callable, Sequence

from exprl.rewards.base import Rollout
from exprl.rewards.registry import register


def load_function(spec: str) -> Callable:
    """The function named by "path/to/file.py:function" (the file is imported as a fresh module)."""
    if not isinstance(spec, str) or spec.count(":") < 1:
        raise ValueError(f"path must look like 'file.py:function', got {spec!r}")
    file, _, function = spec.rpartition(":")
    path = pathlib.Path(file)
    if path.suffix != ".py" or not function.isidentifier():
        raise ValueError(f"path must look like 'file.py:function', got {spec!r}")
    if not path.is_file():
        raise FileNotFoundError(f"reward function file {str(path)!r} (from path={spec!r}) does not exist")
    module_spec = importlib.util.spec_from_file_location(f"exprl_user_reward_{path.stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    fn = getattr(module, function, None)
    if not callable(fn):
        raise ValueError(f"{str(path)!r} defines no function {function!r} (from path={spec!r})")
    return fn


@register
class PythonReward:
    """Calls `fn(problem, response) -> float | None` per rollout; a real number (bools count as 0/1)
    must lie in [0, 1]; None means ungraded. A wrong return type or an exception in the function is the
    user's bug and is raised, naming the file and function.
    """

    name = "python"
    granularity = "response"
    may_hang = True  # user code: the trainer runs it in a worker killed after reward.timeout_s

    def __init__(self, path: str) -> None:
        self.path = path
        self.function = load_function(path)
        self.counters: dict[str, int] = {"ungraded": 0}
        self.first_failure: str | None = None

    def score(self, batch: Sequence[Rollout]) -> list[float | None]:
        scores = []
        for rollout in batch:
            try:
                value = self.function(rollout.problem, rollout.response)
            except Exception as error:
                raise RuntimeError(
                    f"reward function {self.path!r} raised on problem {rollout.problem.id!r}"
                ) from error
            if value is None:
                self.counters["ungraded"] += 1
                self.first_failure = self.first_failure or (
                    f"reward function {self.path!r} returned None on problem {rollout.problem.id!r}"
                )
                scores.append(None)
                continue
            if not isinstance(value, numbers.Real):
                raise TypeError(
                    f"reward function {self.path!r} returned {type(value).__name__}, expected float or None"
                )
            if not (math.isfinite(value) and 0.0 <= value <= 1.0):
                raise ValueError(f"reward function {self.path!r} returned {value!r}, outside [0, 1]")
            scores.append(float(value))
        return scores
