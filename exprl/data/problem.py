"""The unit of work of every stream: one problem with its hidden reference solution."""

from dataclasses import dataclass, field

# Separates the steps of a solution: the segments process judges grade (docs/design.md §1).
SEGMENT_DELIMITER = "###"
ANSWER_PREFIX = "Answer: "


@dataclass(frozen=True)
class Problem:
    """A problem the policy sees as ``prompt``; ``reference`` and ``steps`` are for judges only.

    ``reference`` is the worked solution in the built-in text format: the ``steps`` (each ``lhs=rhs``)
    joined by ``f" {SEGMENT_DELIMITER} "`` and a last segment ``"Answer: <answer>"``.
    """

    id: str
    prompt: str
    answer: str
    reference: str = ""
    steps: tuple[str, ...] = ()
    family: str = "custom"
    level: int = 0
    split: str = "train"
    # where it was read ("file.jsonl:12", "file.parquet: row 3"), for error messages; not compared
    origin: str = field(default="", compare=False)


def format_reference(steps: tuple[str, ...], answer: str) -> str:
    """Join intermediate results and the final answer in the built-in text format."""
    return f" {SEGMENT_DELIMITER} ".join((*steps, ANSWER_PREFIX + answer))


def parse_reference_steps(reference: str) -> tuple[str, ...]:
    """The intermediate segments of a reference, without its final ``Answer:`` segment."""
    segments = [s.strip() for s in reference.split(SEGMENT_DELIMITER)]
    return tuple(s for s in segments if s and not s.startswith(ANSWER_PREFIX.strip()))
