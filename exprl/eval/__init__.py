"""Evaluation as a service: pass@k (unbiased estimator), sampling-based evaluation of a policy with one
settings type (`EvalSettings`), and its report."""

from typing import Any

from exprl.eval.passk import mean_pass_at_k, pass_at_k
from exprl.eval.report import EvalReport, ProblemResult, SplitMetrics
from exprl.eval.settings import EvalSettings, check_eval_settings

__all__ = [
    "EvalReport",
    "EvalSettings",
    "ProblemResult",
    "SplitMetrics",
    "check_eval_settings",
    "evaluate",
    "evaluate_model_dir",
    "evaluate_with",
    "mean_pass_at_k",
    "pass_at_k",
]


def __getattr__(name: str) -> Any:
    # evaluation pulls in models, rewards and kernels; config validation needs only the settings
    if name in ("evaluate", "evaluate_model_dir", "evaluate_with"):
        from exprl.eval import evaluation

        return getattr(evaluation, name)
    raise AttributeError(f"module 'exprl.eval' has no attribute {name!r}")
