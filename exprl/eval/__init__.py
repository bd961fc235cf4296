"""Evaluation: pass@k (unbiased estimator) and sampling-based evaluation of a policy."""

from exprl.eval.passk import mean_pass_at_k, pass_at_k

__all__ = ["mean_pass_at_k", "pass_at_k"]
