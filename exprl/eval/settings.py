"""The evaluation's settings: one type for `exprl eval`, the trainer's before/after evaluation (the `eval:`
section of a run config) and the experiment (the `eval:` section of an experiment config)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from exprl.data import Problem, load_problems
from exprl.rewards import reward_names


@dataclass
class EvalSettings:
    """Which problems, how many samples of each, which pass@k, and how they are sampled and graded."""

    # load_problems sources; each problem's split ("test", "ood") names its row in the report
    problems: list[str] = field(default_factory=lambda: ["builtin:all:3:test:64", "builtin:all:3:ood:64"])
    n: int = 8  # samples per problem
    ks: list[int] = field(default_factory=lambda: [1, 8])  # each in [1, n]
    temperature: float = 1.0  # 0 = greedy
    max_new_tokens: int = 64
    batch_size: int = 64  # sequences per generation batch
    # the sampling seed: the same for every model evaluated with these settings, whatever seed it was
    # trained with ("builtin:" sources name their own seed, default 0)
    seed: int = 0
    verifier: str = "exact"  # the sparse verifier that decides a correct sample (exprl.rewards)

    def load_problems(self) -> list[Problem]:
        """Every problem of `problems`, in order."""
        return [p for source in self.problems for p in load_problems(source)]


def check_eval_settings(settings: EvalSettings, fail: Callable[[str, str], None]) -> None:
    """Range checks; `fail(field, why)` reports the first problem (the caller names the file or flag)."""
    for key in ("n", "max_new_tokens", "batch_size"):
        if getattr(settings, key) < 1:
            fail(key, f"must be >= 1, got {getattr(settings, key)}")
    if settings.temperature < 0:
        fail("temperature", f"must be >= 0 (0 = greedy), got {settings.temperature}")
    if not settings.ks or any(not 1 <= k <= settings.n for k in settings.ks):
        fail("ks", f"every k must be in [1, n={settings.n}], got {settings.ks}")
    if not settings.problems:
        fail("problems", "list at least one problem source")
    if settings.verifier not in reward_names():
        fail("verifier", f"unknown reward {settings.verifier!r}; choose one of {', '.join(reward_names())}")
