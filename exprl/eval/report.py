"""The result of `exprl.eval.evaluate`: per-split pass@k and coverage metrics, JSON and Markdown forms."""

import json
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class SplitMetrics:
    """Aggregates over the problems of one split. pass_at_k maps k -> mean unbiased pass@k."""

    num_problems: int
    pass_at_k: dict[int, float]
    mean_response_length: float  # tokens per response, eos included
    mean_entropy: float  # nats, mean over all sampled response tokens of the split
    never_solved: float  # share of problems with no correct sample out of n
    truncated: float  # share of responses that hit max_new_tokens
    ungraded: int  # responses the verifier could not grade (counted as incorrect)


@dataclass
class ProblemResult:
    id: str
    split: str
    family: str
    level: int
    correct: int  # correct samples out of n


@dataclass
class EvalReport:
    """Result of `evaluate`. `settings` records how it was produced (n, ks, temperature, seed, ...)."""

    settings: dict[str, Any]
    splits: dict[str, SplitMetrics]
    problems: list[ProblemResult] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "settings": dict(self.settings),
            "splits": {
                name: {**asdict(m), "pass_at_k": {str(k): v for k, v in m.pass_at_k.items()}}
                for name, m in self.splits.items()
            },
            "problems": [asdict(p) for p in self.problems],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "EvalReport":
        splits = {
            name: SplitMetrics(**{**m, "pass_at_k": {int(k): float(v) for k, v in m["pass_at_k"].items()}})
            for name, m in data["splits"].items()
        }
        return cls(
            settings=dict(data["settings"]),
            splits=splits,
            problems=[ProblemResult(**p) for p in data.get("problems", [])],
        )

    @classmethod
    def from_json(cls, text: str) -> "EvalReport":
        return cls.from_dict(json.loads(text))

    def to_markdown(self) -> str:
        ks = sorted({k for m in self.splits.values() for k in m.pass_at_k})
        s = self.settings
        lines = [
            f"n = {s.get('n')} samples per problem, temperature {s.get('temperature')}, "
            f"max_new_tokens {s.get('max_new_tokens')}, seed {s.get('seed')}, verifier {s.get('verifier')!r}",
            "",
            "| split | problems | " + " | ".join(f"pass@{k}" for k in ks) + " | never solved | "
            "mean length (tokens) | mean entropy (nats) | truncated |",
            "|---|---:|" + "---:|" * len(ks) + "---:|---:|---:|---:|",
        ]
        for name, m in self.splits.items():
            cells = [name, str(m.num_problems)]
            cells += [f"{m.pass_at_k[k]:.3f}" if k in m.pass_at_k else "" for k in ks]
            cells += [
                f"{m.never_solved:.3f}",
                f"{m.mean_response_length:.1f}",
                f"{m.mean_entropy:.3f}",
                f"{m.truncated:.3f}",
            ]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"
