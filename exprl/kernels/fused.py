"""The fused backends behind one `torch.library` custom op, so the loss works inside `torch.compile`.

`exprl::entropy_pg_loss` runs one sweep over the logits (torch or Triton backend) that yields the
target log-probs, the entropies and, when the logits need a gradient, dlogits = d(loss)/d(logits)
in a preallocated buffer of the logits' dtype. The O(N) rest (objective per token, weighted sum)
uses `reference.token_objective` and `reference.weighted_sum`. Backward only scales dlogits by the
incoming gradient (skipped when that is exactly 1, the usual `loss.backward()`), so the N x V buffer
is neither re-read nor copied.

Why a custom op rather than a bare autograd.Function: the op is opaque to the compiler, so
dynamo does not try to trace the Python chunk loop or the Triton launches; in eager mode the extra
dispatch costs tens of microseconds per call, negligible next to a sweep over N x V logits.
"""

from __future__ import annotations

import torch

from exprl.kernels import reference
from exprl.kernels.reference import ObjectiveOptions, TokenInputs


def _backend_module(backend: str):
    if backend == "triton":
        from exprl.kernels import triton_entropy_pg

        return triton_entropy_pg
    from exprl.kernels import torch_fused

    return torch_fused


@torch.library.custom_op("exprl::entropy_pg_loss", mutates_args=())
def entropy_pg_op(
    logits: torch.Tensor,
    targets: torch.Tensor,
    weights: torch.Tensor,
    advantages: torch.Tensor,
    old_logprobs: torch.Tensor | None,
    ref_logprobs: torch.Tensor | None,
    temperature: float,
    clip_low: float,
    clip_high: float,
    dual_clip: float | None,
    kl_coef: float,
    kl_estimator: str,
    entropy_coef: float,
    backend: str,
    compute_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """logits (N, V); targets (N,) int64; weights, advantages, old/ref (N,) fp32; the scalars of
    `ObjectiveOptions` in field order. compute_grad: fill dlogits for backward (else it is empty).

    Returns (loss 0-dim fp32, differentiable w.r.t. logits; then per token, (N,) fp32: logprobs,
    entropy, ratio, clipped (0/1), kl; then dlogits (N, V) in the logits' dtype, for backward only).
    """
    # the op schema takes plain scalars; the backends take them as one ObjectiveOptions
    options = ObjectiveOptions(clip_low, clip_high, dual_clip, kl_coef, kl_estimator, entropy_coef)
    tokens = TokenInputs(targets, weights, advantages, old_logprobs, ref_logprobs)
    logp, entropy, dlogits = _backend_module(backend).entropy_pg_forward(
        logits, tokens, temperature=temperature, options=options, compute_grad=compute_grad
    )
    parts = reference.token_objective(logp, entropy, advantages, old_logprobs, ref_logprobs, options)
    loss = reference.weighted_sum(weights, parts["l"])
    if dlogits is None:
        dlogits = logits.new_empty(0)
    return loss, logp, entropy, parts["ratio"], parts["clipped"].float(), parts["kl"], dlogits


@entropy_pg_op.register_fake
def _(logits, targets, weights, advantages, old_logprobs, ref_logprobs, *args):
    compute_grad = args[-1]
    n = logits.shape[0]
    per_token = [logits.new_empty(n, dtype=torch.float32) for _ in range(5)]
    dlogits = logits.new_empty(logits.shape) if compute_grad else logits.new_empty(0)
    return (logits.new_empty((), dtype=torch.float32), *per_token, dlogits)


def _setup_context(ctx, inputs, output) -> None:
    ctx.save_for_backward(output[-1])
    # only the loss is differentiable: no zero-filled N x V gradient for the dlogits output
    ctx.set_materialize_grads(False)


def _backward(ctx, grad_loss, *unused):
    (dlogits,) = ctx.saved_tensors
    scaled = dlogits
    # reading grad_loss is a host sync on CUDA (it waits for the queued forward); every sync-free form
    # scales always: an extra N x V read, write and buffer even in the usual case grad_loss == 1
    if torch.compiler.is_compiling() or float(grad_loss) != 1.0:
        scaled = dlogits * grad_loss.to(dlogits.dtype)
    return (scaled,) + (None,) * 14


entropy_pg_op.register_autograd(_backward, setup_context=_setup_context)


@torch.library.custom_op("exprl::logprobs_and_entropy", mutates_args=())
def logprobs_and_entropy_op(
    logits: torch.Tensor, targets: torch.Tensor, temperature: float, backend: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """logits (N, V), targets (N,) int64 -> (logprobs, entropy), (N,) fp32; no autograd (detach logits)."""
    return _backend_module(backend).logprobs_and_entropy(logits, targets, temperature)


@logprobs_and_entropy_op.register_fake
def _(logits, targets, temperature, backend):
    n = logits.shape[0]
    return logits.new_empty(n, dtype=torch.float32), logits.new_empty(n, dtype=torch.float32)
