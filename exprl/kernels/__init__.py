"""The fused entropy-regularised policy-gradient loss op (DESIGN.md §3).

`entropy_pg_loss` and `logprobs_and_entropy` validate their arguments and dispatch to a backend:
`triton` (CUDA), `torch` (fused chunked path, CPU) or `eager` (`exprl.kernels.reference`, the spec).
"""

from exprl.kernels.api import BACKENDS, entropy_pg_loss, logprobs_and_entropy
from exprl.kernels.reference import IGNORE_INDEX, KL_ESTIMATORS, LOSS_AGGS, PGLossOutput

__all__ = [
    "BACKENDS",
    "IGNORE_INDEX",
    "KL_ESTIMATORS",
    "LOSS_AGGS",
    "PGLossOutput",
    "entropy_pg_loss",
    "logprobs_and_entropy",
]
