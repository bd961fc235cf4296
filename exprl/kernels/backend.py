"""The interface of a fused backend of the loss op, and where each backend lives.

A backend is a module with one function, `sweep` (see `LossBackend`): `exprl.kernels.torch_backend`
(CPU) and `exprl.kernels.triton_backend` (CUDA; on CPU tensors under TRITON_INTERPRET=1). The Triton
module is imported on first use, so CPU-only installs never import triton.
"""

from __future__ import annotations

import importlib
from typing import NamedTuple, Protocol

import torch

from exprl.kernels.reference import LossOptions

FUSED_BACKENDS = ("triton", "torch")


class TokenInputs(NamedTuple):
    """The per-token inputs of a sweep, each (rows,) and indexed by row: targets int64, the rest fp32.

    weights are the w_t of `reference.token_weights`; advantages are per token
    (`reference.expand_advantages`). old and ref log-probs are None when absent; weights and
    advantages may be None when no gradient is asked.
    """

    targets: torch.Tensor
    weights: torch.Tensor | None = None
    advantages: torch.Tensor | None = None
    old_logprobs: torch.Tensor | None = None
    ref_logprobs: torch.Tensor | None = None


class LossBackend(Protocol):
    """What the op (and the fused-linear op, chunk by chunk) calls. Stable: callers rely on it.

    `sweep(logits, tokens, options, grad=None) -> (logprobs, entropy)` reads a block of rows of
    logits once (per pass) and returns, per row, fp32 (rows,) tensors:
      logprobs: log softmax(z)[target] with z = logits / options.temperature; 0 for ignore_index;
      entropy:  H = logsumexp(z) - sum_j softmax(z)_j z_j.
    When `grad` is given, it also writes, for every row, the gradient of sum_t w_t l_t w.r.t. the
    logits, dlogits = w_t (g_t (onehot(y_t) - p) + entropy_coef p (z - mu)) / temperature, with
    g_t = `reference.dobjective_dlogp` and l_t = `reference.token_objective` (docs/design.md §3). Rows with
    w_t = 0 get an exact 0, even where their logits are inf or nan.

    logits: (rows, V) or (B, T, V) with rows = B * T in (b, t) order; float32/bfloat16/float16;
      any strides on the leading dims (a `logits[:, :-1]` view, a row stride larger than V) are read
      as they are, without a copy; the last dim must have unit stride.
    tokens: `TokenInputs` of (rows,) tensors; weights and advantages are required with `grad`, and
      weights must be 0 where the target is ignore_index (as `reference.token_weights` makes them).
    options: the loss's `LossOptions` (temperature, clip bounds, dual clip, KL, entropy coefficient).
    grad: None (forward only) or a tensor of the logits' shape and a floating dtype, any leading
      strides, unit last stride; it may be `logits` itself: each element is read before it is
      overwritten, so a caller that no longer needs the logits saves a buffer.
    """

    def sweep(
        self,
        logits: torch.Tensor,
        tokens: TokenInputs,
        options: LossOptions,
        grad: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]: ...


def load_backend(name: str) -> LossBackend:
    """The module of fused backend `name` ("triton" or "torch")."""
    if name not in FUSED_BACKENDS:
        raise ValueError(f"a fused backend is one of {FUSED_BACKENDS}, got {name!r}")
    return importlib.import_module(f"exprl.kernels.{name}_backend")
