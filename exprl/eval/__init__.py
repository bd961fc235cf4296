"""Evaluation: pass@k (unbiased estimator) and sampling-based evaluation of a policy."""

from typing import Any

from exprl.eval.passk import mean_pass_at_k, pass_at_k
from exprl.eval.report import EvalReport, ProblemResult, SplitMetrics

__all__ = ["EvalReport", "ProblemResult", "SplitMetrics", "evaluate", "mean_pass_at_k", "pass_at_k"]


def __getattr__(name: str) -> Any:
    # evaluate pulls in models, rewards and kernels; the trainer only needs pass_at_k, so import lazily.
    if name == "evaluate":
        from exprl.eval.evaluation import evaluate

        return evaluate
    raise AttributeError(f"module 'exprl.eval' has no attribute {name!r}")
