"""Problems for RL: built-in reasoning task families and users' JSONL/Parquet data."""

from exprl.data.loading import load_problems
from exprl.data.order import step_prompts
from exprl.data.problem import SEGMENT_DELIMITER, Problem, format_reference, parse_reference_steps
from exprl.data.tasks import FAMILIES, LEVELS, SPLITS, builtin_problems, iter_problems

__all__ = [
    "FAMILIES",
    "LEVELS",
    "SEGMENT_DELIMITER",
    "SPLITS",
    "Problem",
    "builtin_problems",
    "format_reference",
    "iter_problems",
    "load_problems",
    "parse_reference_steps",
    "step_prompts",
]
