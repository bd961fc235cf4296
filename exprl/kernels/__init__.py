"""The fused entropy-regularised policy-gradient loss op (docs/design.md §3).

`entropy_pg_loss` and `logprobs_and_entropy` (`exprl.kernels.op`) validate their arguments and dispatch
to a backend: `triton` (CUDA, `triton_backend`), `torch` (fused chunked path for CPU, `torch_backend`)
or `eager` (`reference`, the spec). The fused backends share one interface, `backend.LossBackend`.
`linear_entropy_pg_loss` and `linear_logprobs_and_entropy` (`exprl.kernels.linear_op`) take the final
hidden states and the lm_head instead of logits, and sweep chunk by chunk without the N x V logits.
"""

from exprl.kernels.backend import LossBackend, TokenInputs, load_backend
from exprl.kernels.linear_op import default_chunk_size, linear_entropy_pg_loss, linear_logprobs_and_entropy
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
    "default_chunk_size",
    "entropy_pg_loss",
    "linear_entropy_pg_loss",
    "linear_logprobs_and_entropy",
    "load_backend",
    "logprobs_and_entropy",
]
