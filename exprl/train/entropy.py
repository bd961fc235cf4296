"""The adaptive entropy coefficient (`algo.entropy_target`): after every step the coefficient moves by
`rate * (target - entropy)` and is clamped to its bounds, so a policy whose entropy falls below the target
gets a stronger entropy bonus and one above it a weaker one (an integral controller on the coefficient)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class EntropyController:
    coef: float  # the coefficient the next step uses
    target: float | None = None  # None: the coefficient stays fixed
    rate: float = 1e-2
    low: float = 0.0
    high: float = 1e-2

    def __post_init__(self) -> None:
        if self.target is not None and self.target <= 0:
            raise ValueError(f"target must be > 0 or None, got {self.target}")
        if self.rate <= 0:
            raise ValueError(f"rate must be > 0, got {self.rate}")
        if not 0 <= self.low <= self.high:
            raise ValueError(f"bounds must satisfy 0 <= low <= high, got low={self.low}, high={self.high}")

    def update(self, entropy: float) -> float:
        """Feed the mean token entropy of the step just taken; returns the next step's coefficient."""
        if self.target is not None:
            self.coef = min(max(self.coef + self.rate * (self.target - entropy), self.low), self.high)
        return self.coef

    @classmethod
    def from_config(cls, algo, coef: float | None = None) -> EntropyController:
        """The controller of `algo` (an AlgoConfig), starting at `coef` (a resumed run's) or at
        algo.entropy_coef."""
        low, high = algo.entropy_coef_bounds
        start = algo.entropy_coef if coef is None else coef
        return cls(start, algo.entropy_target, algo.entropy_rate, low, high)
