"""The fused entropy-regularised policy-gradient loss op (docs/design.md §3).

`entropy_pg_loss` and `logprobs_and_entropy` (`exprl.kernels.op`) validate their arguments and dispatch
to a backend: `triton` (CUDA, `triton_backend`), `torch` (fused chunked path for CPU, `torch_backend`)
or `eager` (`reference`, the spec). The fused backends share one interface, `backend.LossBackend`.
"""

from exprl.kernels.backend import LossBackend, TokenInputs, load_backend
from exprl.kernels.op import BACKENDS, entropy_pg_loss, logprobs_and_entropy
from exprl.kernels.reference import IGNORE_INDEX, KL_ESTIMATORS, LOSS_AGGS, LossOptions, PGLossOutput

__all__ = [
    "BACKENDS",
    "IGNORE_INDEX",
    "KL_ESTIMATORS",
    "LOSS_AGGS",
    "LossBackend",
    "LossOptions",
    "PGLossOutput",
    "TokenInputs",
    "entropy_pg_loss",
    "load_backend",
    "logprobs_and_entropy",
]
