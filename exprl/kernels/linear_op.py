"""The fused linear + loss op: the loss of `entropy_pg_loss` from the final hidden states and the lm_head,
without ever holding the N x V logits (DESIGN.md §3).

`linear_entropy_pg_loss(hidden, weight, target_ids, advantages, ...)` is `entropy_pg_loss(hidden @ weight.T
+ bias, target_ids, advantages, ...)`: the same options, the same output. The rows are processed in chunks:
a chunk's logits are one matmul into a reused (chunk, V) buffer, the backend's sweep
(`backend.LossBackend.sweep`, the same row kernel as `entropy_pg_loss`) reads them once and writes their
gradient over them in place, and that gradient is folded at once into dhidden (chunk rows of it), dweight
and dbias by two more matmuls. So the largest temporary is one chunk of logits, and the peak extra memory
is O(chunk * V + N * H + V * H) (the gradients), never O(N * V).

Why the gradient is computed in forward: the loss's gradient w.r.t. the logits needs the aggregation
weights w_t, which depend only on masks and lengths (`op._token_inputs`), so they are known before the
first chunk. The one sweep per chunk in forward therefore yields the final dhidden/dweight/dbias for
`loss.backward()`; backward only scales them by the incoming gradient (skipped when it is exactly 1). The
alternative, recomputing the logits in backward, would cost a second matmul over N x H x V and a second
sweep. The forward computes the gradient only when an input needs one and grad mode is on.

Precision: each chunk's logits and their gradient are stored in the inputs' dtype, as autograd over
materialised logits would store them; matmuls accumulate in fp32 (cuBLAS, and the CPU BLAS for fp32).
dweight sums the chunks in the weight's dtype (in place, `addmm_`): for bf16 weights that rounds once per
chunk, where one matmul over all rows would round once; dbias sums in fp32.

`linear_logprobs_and_entropy` is the forward-only twin (no autograd), for reference and old-policy passes.
Backends as for `entropy_pg_loss`: `triton` (CUDA; cuBLAS does the matmuls), `torch` (CPU), `eager` (the
reference: materialises the logits with `F.linear` and calls `reference.entropy_pg_loss`).
"""

from __future__ import annotations

import dataclasses
import math
import numbers

import torch
import torch.nn.functional as F

from exprl.kernels import reference
from exprl.kernels.backend import TokenInputs, load_backend
from exprl.kernels.op import (
    _FLOAT_DTYPES,
    _check_loss_args,
    _check_targets,
    _output,
    _resolve_backend,
    _scaled_by,
    _token_inputs,
)
from exprl.kernels.reference import LossOptions, PGLossOutput, check_number

# the default chunk of logits holds at least this many elements (128 MiB in fp32): smaller matmuls lose
# speed (on CPU, BLAS at V = 32k is ~1.6x slower at 256 rows than at 1024; a GPU wants >= 256 rows)
MIN_CHUNK_ELEMENTS = 1 << 25


def default_chunk_size(rows: int, hidden_size: int, vocab: int) -> int:
    """Rows per chunk when `chunk_size` is None: a chunk of logits as large as the hidden states (rows * H
    elements), so that it adds at most the memory the input already takes, but no smaller than
    MIN_CHUNK_ELEMENTS; at most `rows` (one chunk when all the logits fit in that)."""
    elements = max(rows * hidden_size, MIN_CHUNK_ELEMENTS)
    return max(1, min(rows, math.ceil(elements / vocab)))


def _chunk_logits(
    buffer: torch.Tensor, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """hidden (rows, H) @ weight.T (+ bias) written into the first `rows` rows of `buffer` (chunk, V)."""
    out = buffer[: len(hidden)]
    if bias is None:
        return torch.mm(hidden, weight.t(), out=out)
    return torch.addmm(bias, hidden, weight.t(), out=out)


def _linear_loss_forward(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    weights: torch.Tensor,
    advantages: torch.Tensor,
    old_logprobs: torch.Tensor | None,
    ref_logprobs: torch.Tensor | None,
    options: str,
    backend: str,
    chunk_size: int,
    grad_hidden: bool,
    grad_weight: bool,
    grad_bias: bool,
) -> tuple[
    torch.Tensor,
    torch.Tensor,
    torch.Tensor,
    torch.Tensor,
    torch.Tensor,
    torch.Tensor,
    torch.Tensor,
    torch.Tensor,
    torch.Tensor,
]:
    """hidden (N, H), weight (V, H), bias (V,) or None, in one dtype; targets (N,) int64; weights, advantages,
    old/ref (N,) fp32; options: `LossOptions.encode()`. grad_*: which gradients to compute for backward.

    Returns (loss 0-dim fp32; per row, (N,) fp32: logprobs, entropy, ratio, clipped (0/1), kl; then
    dhidden (N, H), dweight (V, H), dbias (V,) in the inputs' dtype for backward, each empty when not asked).
    """
    opts = LossOptions.decode(options)
    sweep = load_backend(backend).sweep
    n, vocab = hidden.shape[0], weight.shape[0]
    compute_grad = grad_hidden or grad_weight or grad_bias
    dhidden = torch.empty_like(hidden) if grad_hidden else hidden.new_empty(0)
    dweight = torch.zeros_like(weight) if grad_weight else hidden.new_empty(0)
    dbias32 = torch.zeros(vocab, dtype=torch.float32, device=hidden.device) if grad_bias else None
    logp = torch.empty(n, dtype=torch.float32, device=hidden.device)
    entropy = torch.empty_like(logp)
    buffer = hidden.new_empty(min(n, chunk_size), vocab)
    for start in range(0, n, chunk_size):
        stop = min(n, start + chunk_size)
        rows = slice(start, stop)
        chunk_hidden = hidden[rows]
        logits = _chunk_logits(buffer, chunk_hidden, weight, bias)
        per_token = (targets, weights, advantages, old_logprobs, ref_logprobs)
        tokens = TokenInputs(*(None if x is None else x[rows] for x in per_token))
        # the sweep overwrites the chunk's logits with their gradient (each read before it is written)
        logp[rows], entropy[rows] = sweep(logits, tokens, opts, logits if compute_grad else None)
        if grad_hidden:
            torch.mm(logits, weight, out=dhidden[rows])
        if grad_weight:
            dweight.addmm_(logits.t(), chunk_hidden)
        if dbias32 is not None:
            dbias32 += logits.sum(0, dtype=torch.float32)
    parts = reference.token_objective(logp, entropy, advantages, old_logprobs, ref_logprobs, opts)
    loss = reference.weighted_sum(weights, parts["l"])
    dbias = hidden.new_empty(0) if dbias32 is None else dbias32.to(hidden.dtype)
    return loss, logp, entropy, parts["ratio"], parts["clipped"].float(), parts["kl"], dhidden, dweight, dbias


# the plain function stays reachable (tests measure what it allocates); the op wraps it
_linear_loss_op = torch.library.custom_op("exprl::linear_entropy_pg_loss", mutates_args=())(
    _linear_loss_forward
)


@_linear_loss_op.register_fake
def _(hidden, weight, bias, targets, weights, advantages, old, ref, options, backend, chunk_size, gh, gw, gb):
    per_row = [hidden.new_empty(targets.shape[0], dtype=torch.float32) for _ in range(5)]
    grads = [
        hidden.new_empty(x.shape) if wanted and x is not None else hidden.new_empty(0)
        for x, wanted in ((hidden, gh), (weight, gw), (bias, gb))
    ]
    return (hidden.new_empty((), dtype=torch.float32), *per_row, *grads)


def _setup_context(ctx, inputs, output) -> None:
    ctx.save_for_backward(*output[-3:])
    # only the loss is differentiable: the gradient outputs get no zero-filled gradients of their own
    ctx.set_materialize_grads(False)


def _backward(ctx, grad_loss, *unused):
    grads = tuple(
        _scaled_by(grad, grad_loss) if wanted else None
        for grad, wanted in zip(ctx.saved_tensors, ctx.needs_input_grad[:3], strict=True)
    )
    return grads + (None,) * (len(ctx.needs_input_grad) - 3)


_linear_loss_op.register_autograd(_backward, setup_context=_setup_context)


@torch.library.custom_op("exprl::linear_logprobs_and_entropy", mutates_args=())
def _linear_logprobs_op(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    temperature: float,
    backend: str,
    chunk_size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """hidden (N, H), weight (V, H), bias (V,) or None, targets (N,) int64 -> (N,) fp32 logprobs, entropy."""
    sweep = load_backend(backend).sweep
    options = LossOptions(temperature=temperature)
    n = hidden.shape[0]
    logp = torch.empty(n, dtype=torch.float32, device=hidden.device)
    entropy = torch.empty_like(logp)
    buffer = hidden.new_empty(min(n, chunk_size), weight.shape[0])
    for start in range(0, n, chunk_size):
        rows = slice(start, min(n, start + chunk_size))
        logits = _chunk_logits(buffer, hidden[rows], weight, bias)
        logp[rows], entropy[rows] = sweep(logits, TokenInputs(targets[rows]), options)
    return logp, entropy


@_linear_logprobs_op.register_fake
def _(hidden, weight, bias, targets, temperature, backend, chunk_size):
    rows = targets.shape[0]
    return hidden.new_empty(rows, dtype=torch.float32), hidden.new_empty(rows, dtype=torch.float32)


def _check_linear(
    hidden: object, weight: object, bias: object, target_ids: object, chunk_size: object
) -> tuple[torch.Tensor, torch.Tensor, int | None]:
    """hidden, weight and bias against each other, target_ids against them; returns target_ids (int64),
    hidden as (N, H) rows (a view when its strides allow) and the chunk size (None: the default)."""
    if not isinstance(hidden, torch.Tensor):
        raise TypeError(f"hidden must be a torch.Tensor, got {type(hidden).__name__}")
    if hidden.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"hidden must be float32, bfloat16 or float16, got {hidden.dtype}")
    if hidden.dim() not in (2, 3) or hidden.shape[-1] == 0:
        raise ValueError(f"hidden must have shape (N, H) or (B, T, H) with H > 0, got {tuple(hidden.shape)}")
    size = hidden.shape[-1]
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"weight must be a torch.Tensor, got {type(weight).__name__}")
    if weight.dim() != 2 or weight.shape[1] != size or weight.shape[0] == 0:
        raise ValueError(
            f"weight must have shape (V, H) = (V, {size}) with V > 0 (the lm_head), got {tuple(weight.shape)}"
        )
    for name, value in (("weight", weight), ("bias", bias)):
        if value is None:
            continue
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
        if value.dtype != hidden.dtype:
            raise TypeError(f"{name} must have the dtype of hidden ({hidden.dtype}), got {value.dtype}")
        if value.device != hidden.device:
            raise ValueError(f"{name} is on {value.device} but hidden is on {hidden.device}")
    vocab = weight.shape[0]
    if bias is not None and bias.shape != (vocab,):
        raise ValueError(f"bias must have shape (V,) = ({vocab},), got {tuple(bias.shape)}")
    if chunk_size is not None:
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, numbers.Integral) or chunk_size <= 0:
            raise ValueError(f"chunk_size must be a positive integer or None, got {chunk_size!r}")
        chunk_size = int(chunk_size)
    target_ids = _check_targets(target_ids, hidden, vocab, "hidden")
    return target_ids, hidden.reshape(-1, size), chunk_size


def linear_logprobs_and_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    target_ids: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    temperature: float = 1.0,
    chunk_size: int | None = None,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """`logprobs_and_entropy(hidden @ weight.T + bias, target_ids)` without the N x V logits; no autograd.

    hidden (N, H) or (B, T, H) float32/bfloat16/float16; weight (V, H) and bias (V,) of its dtype;
    target_ids (N,) or (B, T) int64 with ignore_index -100 (its log-prob is 0). chunk_size: rows per
    chunk of logits (None: `default_chunk_size`). Returns (logprobs, entropy), fp32, shape of target_ids.
    """
    target_ids, rows, chunk_size = _check_linear(hidden, weight, bias, target_ids, chunk_size)
    temperature = check_number("temperature", temperature, low=0.0, strict=True)
    backend = _resolve_backend(backend, rows)
    if backend == "eager":
        logits = F.linear(hidden.detach(), weight.detach(), None if bias is None else bias.detach())
        return reference.logprobs_and_entropy(logits, target_ids, temperature=temperature)
    chunk = chunk_size or default_chunk_size(*rows.shape, weight.shape[0])
    detached = None if bias is None else bias.detach()
    logp, entropy = _linear_logprobs_op(
        rows.detach(), weight.detach(), detached, target_ids.reshape(-1), temperature, backend, chunk
    )
    return logp.reshape(target_ids.shape), entropy.reshape(target_ids.shape)


def linear_entropy_pg_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    target_ids: torch.Tensor,
    advantages: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    chunk_size: int | None = None,
    mask: torch.Tensor | None = None,
    old_logprobs: torch.Tensor | None = None,
    ref_logprobs: torch.Tensor | None = None,
    temperature: float = 1.0,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    dual_clip: float | None = None,
    kl_coef: float = 0.0,
    kl_estimator: str = "k3",
    entropy_coef: float = 0.0,
    loss_agg: str = "token-mean",
    norm_tokens: float | torch.Tensor | None = None,
    max_len: int | None = None,
    cu_seqlens: torch.Tensor | None = None,
    backend: str = "auto",
) -> PGLossOutput:
    """`entropy_pg_loss(hidden @ weight.T + bias, target_ids, advantages, ...)` without the N x V logits.

    hidden: (N, H) or (B, T, H), float32/bfloat16/float16, CPU or CUDA: the final hidden states of the
        positions that predict `target_ids`. weight: (V, H), the lm_head (tied or not); bias: (V,) or None;
        both of hidden's dtype and device.
    target_ids, advantages, mask, old_logprobs, ref_logprobs, cu_seqlens and the scalar options: as for
        `entropy_pg_loss` (DESIGN.md §3).
    chunk_size: rows of logits held at once (None: `default_chunk_size`, as large as hidden, >= 2^25 logits).
    Returns `PGLossOutput`; the loss is differentiable w.r.t. hidden, weight and bias.
    """
    target_ids, rows, chunk_size = _check_linear(hidden, weight, bias, target_ids, chunk_size)
    options, advantages, per_token = _check_loss_args(
        target_ids,
        advantages,
        mask=mask,
        old_logprobs=old_logprobs,
        ref_logprobs=ref_logprobs,
        norm_tokens=norm_tokens,
        cu_seqlens=cu_seqlens,
        temperature=temperature,
        clip_low=clip_low,
        clip_high=clip_high,
        dual_clip=dual_clip,
        kl_coef=kl_coef,
        kl_estimator=kl_estimator,
        entropy_coef=entropy_coef,
        loss_agg=loss_agg,
        max_len=max_len,
    )
    backend = _resolve_backend(backend, rows)
    if backend == "eager":
        logits = F.linear(hidden, weight, bias)
        return reference.entropy_pg_loss(
            logits, target_ids, advantages, **per_token, **dataclasses.asdict(options)
        )
    m, tokens = _token_inputs(target_ids, advantages, options, **per_token)
    grad_on = torch.is_grad_enabled()
    wants = [grad_on and x is not None and x.requires_grad for x in (hidden, weight, bias)]
    chunk = chunk_size or default_chunk_size(*rows.shape, weight.shape[0])
    loss, logp, entropy, ratio, clipped, kl, *_ = _linear_loss_op(
        rows, weight, bias, *tokens, options.encode(), backend, chunk, *wants
    )
    return _output(loss, logp, entropy, ratio, clipped, kl, m, target_ids.shape)
