"""The loss op: the public entry points, their argument checks, and the autograd of the fused path.

`entropy_pg_loss` and `logprobs_and_entropy` validate their arguments, build one `LossOptions`, and
dispatch by backend: `eager` runs `exprl.kernels.reference` (the spec); `triton` and `torch` run a
fused `LossBackend.sweep` (`exprl.kernels.backend`) inside a `torch.library` custom op.

The O(N) work (advantage broadcast, aggregation weights w_t, the per-token objective, stats) happens
here in torch with the spec's helpers; the backend's sweep does the O(N*V) part: one pass over the
logits that yields the target log-probs, the entropies and, when the logits need a gradient,
dlogits = d(loss)/d(logits) in a preallocated buffer of the logits' dtype. Backward only scales
dlogits by the incoming gradient (skipped when that is exactly 1, the usual `loss.backward()`), so the
N x V buffer is neither re-read nor copied.

Why a custom op rather than a bare autograd.Function: the op is opaque to the compiler, so dynamo
does not try to trace the Python chunk loop or the Triton launches; in eager mode the extra dispatch
costs tens of microseconds per call, negligible next to a sweep over N x V logits. Its schema takes
no Python objects, so `LossOptions` crosses it as one string (`LossOptions.encode`).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os

import torch

from exprl.kernels import reference
from exprl.kernels.backend import TokenInputs, load_backend
from exprl.kernels.reference import IGNORE_INDEX, LossOptions, PGLossOutput, check_number

BACKENDS = ("auto", "triton", "torch", "eager")
_FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
_HAS_TRITON = importlib.util.find_spec("triton") is not None


def _check_token_tensor(name: str, value: object, shape: torch.Size, device: torch.device) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if value.shape != shape:
        raise ValueError(f"{name} must have the shape of target_ids {tuple(shape)}, got {tuple(value.shape)}")
    if value.device != device:
        raise ValueError(f"{name} is on {value.device} but target_ids are on {device}")
    return value


def _check_float_tensor(name: str, value: object, shape: torch.Size, device: torch.device) -> torch.Tensor:
    value = _check_token_tensor(name, value, shape, device)
    if not value.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {value.dtype}")
    return value


def _check_logits_and_targets(logits: object, target_ids: object) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"logits must be a torch.Tensor, got {type(logits).__name__}")
    if logits.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"logits must be float32, bfloat16 or float16, got {logits.dtype}")
    if logits.dim() not in (2, 3) or logits.shape[-1] == 0:
        raise ValueError(f"logits must have shape (N, V) or (B, T, V) with V > 0, got {tuple(logits.shape)}")
    return logits, _check_targets(target_ids, logits, logits.shape[-1], "logits", shifted=True)


def _check_targets(
    target_ids: object, rows: torch.Tensor, vocab: int, rows_name: str, shifted: bool = False
) -> torch.Tensor:
    """target_ids (int64) checked against `rows` (the logits, or the hidden states of the fused linear op:
    one target per row, so the shape of `rows` without its last dim; with `shifted`, (B, T+1, .) rows may
    also take (B, T) targets, `_is_shifted`) and the vocabulary size."""
    if not isinstance(target_ids, torch.Tensor):
        raise TypeError(f"target_ids must be a torch.Tensor, got {type(target_ids).__name__}")
    if target_ids.dtype.is_floating_point or target_ids.dtype.is_complex or target_ids.dtype == torch.bool:
        raise TypeError(f"target_ids must be an integer (int64) tensor, got {target_ids.dtype}")
    if target_ids.shape != rows.shape[:-1] and not (shifted and _is_shifted(rows, target_ids)):
        also = f" or {(rows.shape[0], rows.shape[1] - 1)}" if shifted and rows.dim() == 3 else ""
        without = f"{rows_name} without their last dim" + (", or without their last position" if also else "")
        raise ValueError(
            f"target_ids must have shape {tuple(rows.shape[:-1])}{also} ({without}), "
            f"got {tuple(target_ids.shape)}"
        )
    if target_ids.device != rows.device:
        raise ValueError(f"target_ids is on {target_ids.device} but {rows_name} are on {rows.device}")
    if torch.compiler.is_compiling():
        # a value check needs a host sync, which would break the compiled graph: checked in eager only
        return target_ids.long()
    bad = ((target_ids < 0) | (target_ids >= vocab)) & (target_ids != IGNORE_INDEX)
    if target_ids.numel() and bool(bad.any()):
        raise ValueError(
            f"target_ids must lie in [0, {vocab}) or be ignore_index {IGNORE_INDEX}, "
            f"got {int(target_ids[bad].reshape(-1)[0])}"
        )
    return target_ids.long()


def _is_shifted(logits: torch.Tensor, target_ids: torch.Tensor) -> bool:
    """(B, T+1, V) logits with (B, T) targets, as causal LMs return them: the last position is ignored."""
    return (
        logits.dim() == 3
        and target_ids.dim() == 2
        and target_ids.shape[0] == logits.shape[0]
        and target_ids.shape[1] == logits.shape[1] - 1
    )


def _target_rows(logits: torch.Tensor, rows: int) -> torch.Tensor:
    """The logits of the `rows` positions that have a target: all of them, or, of checked (B, T+1, V)
    logits with B * T targets, the first T positions of each sequence (a view, no copy)."""
    if logits.dim() == 3 and logits.shape[0] * logits.shape[1] != rows:
        return logits[:, : rows // logits.shape[0]]
    return logits


def _unit_vocab_stride(logits: torch.Tensor) -> torch.Tensor:
    """The logits with unit stride over V, as the fused backends read them (a copy only if needed)."""
    return logits if logits.shape[-1] == 1 or logits.stride(-1) == 1 else logits.contiguous()


def _resolve_backend(backend: object, logits: torch.Tensor) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        return "triton" if logits.is_cuda and _HAS_TRITON else "torch"
    if backend == "triton" and not _HAS_TRITON:
        raise ValueError("backend='triton' needs the triton package, which is not installed")
    if backend == "triton" and not logits.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError("backend='triton' needs CUDA logits (or TRITON_INTERPRET=1 for CPU tensors)")
    return backend


def _check_cu_seqlens(cu_seqlens: object, target_ids: torch.Tensor) -> torch.Tensor | None:
    if cu_seqlens is None:
        return None
    if not isinstance(cu_seqlens, torch.Tensor):
        raise TypeError(f"cu_seqlens must be a torch.Tensor, got {type(cu_seqlens).__name__}")
    if target_ids.dim() != 1:
        raise ValueError(
            f"cu_seqlens applies to packed input ((N,) target_ids) only, got target_ids of shape "
            f"{tuple(target_ids.shape)}"
        )
    if cu_seqlens.dtype.is_floating_point or cu_seqlens.dtype == torch.bool or cu_seqlens.dim() != 1:
        raise TypeError(
            f"cu_seqlens must be a 1-D integer tensor, got {cu_seqlens.dtype} {tuple(cu_seqlens.shape)}"
        )
    n = target_ids.shape[0]
    cu = cu_seqlens.long().to(target_ids.device)
    if len(cu) < 2 or int(cu[0]) != 0 or int(cu[-1]) != n or bool((cu[1:] < cu[:-1]).any()):
        raise ValueError(
            f"cu_seqlens must be non-decreasing from 0 to N={n} with at least 2 entries, "
            f"got {cu_seqlens.tolist() if len(cu) <= 16 else tuple(cu_seqlens.shape)}"
        )
    return cu


def _check_advantages(
    advantages: object, target_ids: torch.Tensor, cu_seqlens: torch.Tensor | None
) -> torch.Tensor:
    if not isinstance(advantages, torch.Tensor):
        raise TypeError(f"advantages must be a torch.Tensor, got {type(advantages).__name__}")
    if not advantages.is_floating_point():
        raise TypeError(f"advantages must be a floating-point tensor, got {advantages.dtype}")
    if advantages.device != target_ids.device:
        raise ValueError(f"advantages is on {advantages.device} but target_ids are on {target_ids.device}")
    shape = target_ids.shape
    if len(shape) == 2:
        allowed = [shape, (shape[0],)]
    elif cu_seqlens is not None:
        sequences = len(cu_seqlens) - 1
        allowed = [shape, (sequences,), (sequences, 1)]
        lengths = cu_seqlens[1:] - cu_seqlens[:-1]
        # (S,) with S == N reads both ways; the two agree only when every sequence has one token
        if sequences == shape[0] and advantages.shape == shape and bool((lengths != 1).any()):
            raise ValueError(
                f"advantages of shape {tuple(shape)} is ambiguous: cu_seqlens has as many sequences as "
                f"tokens ({sequences}); pass one advantage per sequence as shape ({sequences}, 1), or "
                f"drop the empty sequences (they add nothing to the loss) from cu_seqlens"
            )
    else:
        allowed = [shape]
    if advantages.shape not in allowed:
        names = ["one per token", "one per sequence", "one per sequence, explicit"]
        forms = ", ".join(f"{tuple(a)} ({name})" for a, name in zip(allowed, names, strict=False))
        raise ValueError(f"advantages must have shape {forms}, got {tuple(advantages.shape)}")
    return advantages


def _check_call_options(
    options: LossOptions,
    ref_logprobs: torch.Tensor | None,
    norm_tokens: object,
    cu_seqlens: torch.Tensor | None,
    target_ids: torch.Tensor,
) -> None:
    """The checks that tie the options to this call's tensors (LossOptions checks itself)."""
    if options.kl_coef > 0 and ref_logprobs is None:
        raise ValueError("ref_logprobs is required when kl_coef > 0")
    if norm_tokens is not None:
        if options.loss_agg != "token-mean":
            raise ValueError(
                f"norm_tokens applies to loss_agg='token-mean' only, got loss_agg={options.loss_agg!r}"
            )
        if isinstance(norm_tokens, torch.Tensor):
            if norm_tokens.numel() != 1 or norm_tokens.is_complex():
                raise ValueError(
                    f"norm_tokens must be a scalar, got a tensor of shape {tuple(norm_tokens.shape)}"
                )
        else:
            check_number("norm_tokens", norm_tokens, low=0.0)
    agg = options.loss_agg
    if agg != "token-mean" and target_ids.dim() == 1 and cu_seqlens is None:
        raise ValueError(f"cu_seqlens is required for loss_agg={agg!r} with packed input ((N,) target_ids)")


def _loss_forward(
    logits: torch.Tensor,
    targets: torch.Tensor,
    weights: torch.Tensor,
    advantages: torch.Tensor,
    old_logprobs: torch.Tensor | None,
    ref_logprobs: torch.Tensor | None,
    options: str,
    backend: str,
    compute_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """logits (N, V), (B, T, V) or (B, T+1, V), any strides but unit over V; targets, weights,
    advantages, old/ref (rows,): int64 targets, the rest fp32; options: `LossOptions.encode()`.
    compute_grad: fill dlogits for backward (else it is empty).

    Returns (loss 0-dim fp32, differentiable w.r.t. logits; then per row, (rows,) fp32: logprobs,
    entropy, ratio, clipped (0/1), kl; then dlogits, the logits' shape and dtype, for backward only).
    """
    opts = LossOptions.decode(options)
    rows = _target_rows(logits, len(targets))
    tokens = TokenInputs(targets, weights, advantages, old_logprobs, ref_logprobs)
    dlogits = grad_rows = None
    if compute_grad:
        # the one N x V buffer of the op; a shifted-off last position gets gradient 0
        dlogits = torch.empty_like(logits, memory_format=torch.contiguous_format)
        grad_rows = _target_rows(dlogits, len(targets))
        if grad_rows.shape != dlogits.shape:
            dlogits[:, grad_rows.shape[1] :].zero_()
    logp, entropy = load_backend(backend).sweep(rows, tokens, opts, grad_rows)
    parts = reference.token_objective(logp, entropy, advantages, old_logprobs, ref_logprobs, opts)
    loss = reference.weighted_sum(weights, parts["l"])
    if dlogits is None:
        dlogits = logits.new_empty(0)
    return loss, logp, entropy, parts["ratio"], parts["clipped"].float(), parts["kl"], dlogits


# the plain function stays reachable (tests measure what it allocates), the op wraps it
_loss_op = torch.library.custom_op("exprl::entropy_pg_loss", mutates_args=())(_loss_forward)


@_loss_op.register_fake
def _(logits, targets, weights, advantages, old_logprobs, ref_logprobs, options, backend, compute_grad):
    rows = targets.shape[0]
    per_row = [logits.new_empty(rows, dtype=torch.float32) for _ in range(5)]
    dlogits = logits.new_empty(logits.shape) if compute_grad else logits.new_empty(0)
    return (logits.new_empty((), dtype=torch.float32), *per_row, dlogits)


def _setup_context(ctx, inputs, output) -> None:
    ctx.save_for_backward(output[-1])
    # only the loss is differentiable: no zero-filled N x V gradient for the dlogits output
    ctx.set_materialize_grads(False)


def _scaled_by(grad: torch.Tensor, grad_loss: torch.Tensor) -> torch.Tensor:
    """A gradient computed in forward for loss.backward() (grad_loss == 1), scaled by the actual grad_loss.

    Reading grad_loss is a host sync on CUDA (it waits for the queued forward); every sync-free form
    scales always: an extra read, write and buffer of the gradient even in the usual case grad_loss == 1.
    """
    if torch.compiler.is_compiling() or float(grad_loss) != 1.0:
        return grad * grad_loss.to(grad.dtype)
    return grad


def _backward(ctx, grad_loss, *unused):
    (dlogits,) = ctx.saved_tensors
    return (_scaled_by(dlogits, grad_loss),) + (None,) * (len(ctx.needs_input_grad) - 1)


_loss_op.register_autograd(_backward, setup_context=_setup_context)


@torch.library.custom_op("exprl::logprobs_and_entropy", mutates_args=())
def _logprobs_op(
    logits: torch.Tensor, targets: torch.Tensor, temperature: float, backend: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """logits (N, V) or (B, T, V), targets (rows,) int64 -> (logprobs, entropy), (rows,) fp32; no autograd."""
    return load_backend(backend).sweep(logits, TokenInputs(targets), LossOptions(temperature=temperature))


@_logprobs_op.register_fake
def _(logits, targets, temperature, backend):
    rows = targets.shape[0]
    return logits.new_empty(rows, dtype=torch.float32), logits.new_empty(rows, dtype=torch.float32)


def logprobs_and_entropy(
    logits: torch.Tensor, target_ids: torch.Tensor, *, temperature: float = 1.0, backend: str = "auto"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probs of `target_ids` under softmax(logits / temperature) and the entropies; no autograd.

    logits (N, V) or (B, T, V) float32/bfloat16/float16; target_ids (N,) or (B, T) int64 with
    ignore_index -100 (its log-prob is 0). Returns (logprobs, entropy), fp32, shape of target_ids.
    """
    logits, target_ids = _check_logits_and_targets(logits, target_ids)
    temperature = check_number("temperature", temperature, low=0.0, strict=True)
    backend = _resolve_backend(backend, logits)
    rows = _target_rows(logits, target_ids.numel())
    if backend == "eager":
        return reference.logprobs_and_entropy(rows, target_ids, temperature=temperature)
    logp, entropy = _logprobs_op(
        _unit_vocab_stride(rows.detach()), target_ids.reshape(-1), temperature, backend
    )
    return logp.reshape(target_ids.shape), entropy.reshape(target_ids.shape)


def entropy_pg_loss(
    logits: torch.Tensor,
    target_ids: torch.Tensor,
    advantages: torch.Tensor,
    *,
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
    """Clipped policy-gradient loss with KL penalty and entropy bonus, fused over the vocabulary.

    logits: (N, V), (B, T, V), or (B, T+1, V) as causal LMs return them (the last position is ignored
        and gets gradient 0); float32/bfloat16/float16, CPU or CUDA. Any strides on the leading dims
        are read in place (pass the (B, T+1, V) tensor itself, not `logits[:, :-1]`: autograd turns a
        view's gradient into a second N x V buffer).
    target_ids: (N,) or (B, T) int64, ignore_index -100 marks masked tokens.
    advantages: shape of target_ids, or (B,) broadcast over T, or with packed input one per sequence,
        (S,) or (S, 1); (S,) is refused where it is ambiguous (S == N, some sequence not of length 1).
    mask, old_logprobs, ref_logprobs: shape of target_ids (mask bool or float).
    The scalar options are the fields of `LossOptions`; see docs/design.md §3 for the math.
    Returns `PGLossOutput` (loss differentiable w.r.t. logits only).

    Where this differs from other trainers with the same option names:
    - seq-mean-token-sum-norm divides the sum of token losses by S * max_len (S sequences);
      verl divides by max_len only, so its loss is S times ours.
    - S, the number of sequences in the seq-mean modes, counts only sequences with at least one
      unmasked token; TRL and Liger-Kernel average over all sequences, fully masked ones included.
    - Neither the log-ratio of the PPO ratio nor the k3 estimate is clamped; verl clamps both.
    """
    logits, target_ids = _check_logits_and_targets(logits, target_ids)
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
    backend = _resolve_backend(backend, logits)
    if backend == "eager":
        return reference.entropy_pg_loss(
            _target_rows(logits, target_ids.numel()),
            target_ids,
            advantages,
            **per_token,
            **dataclasses.asdict(options),
        )
    m, tokens = _token_inputs(target_ids, advantages, options, **per_token)
    compute_grad = logits.requires_grad and torch.is_grad_enabled()
    loss, logp, entropy, ratio, clipped, kl, _ = _loss_op(
        _unit_vocab_stride(logits), *tokens, options.encode(), backend, compute_grad
    )
    return _output(loss, logp, entropy, ratio, clipped, kl, m, target_ids.shape)


def _check_loss_args(
    target_ids: torch.Tensor,
    advantages: object,
    *,
    mask: object,
    old_logprobs: object,
    ref_logprobs: object,
    norm_tokens: object,
    cu_seqlens: object,
    **scalar_options: object,
) -> tuple[LossOptions, torch.Tensor, dict[str, object]]:
    """The scalar options (`LossOptions` fields) and the per-token arguments of a loss call, checked
    against the (checked) target_ids.

    Shared by `entropy_pg_loss` and the fused linear op. Returns the options, the advantages and the
    keyword arguments of `reference.entropy_pg_loss` (mask, old_logprobs, ref_logprobs, norm_tokens,
    cu_seqlens as int64), which `_token_inputs` also takes.
    """
    options = LossOptions(**scalar_options)
    device, shape = target_ids.device, target_ids.shape
    cu_seqlens = _check_cu_seqlens(cu_seqlens, target_ids)
    advantages = _check_advantages(advantages, target_ids, cu_seqlens)
    if mask is not None:
        mask = _check_token_tensor("mask", mask, shape, device)
        if mask.is_complex():
            raise TypeError(f"mask must be bool or float, got {mask.dtype}")
    if old_logprobs is not None:
        old_logprobs = _check_float_tensor("old_logprobs", old_logprobs, shape, device)
    if ref_logprobs is not None:
        ref_logprobs = _check_float_tensor("ref_logprobs", ref_logprobs, shape, device)
    _check_call_options(options, ref_logprobs, norm_tokens, cu_seqlens, target_ids)
    per_token = dict(
        mask=mask,
        old_logprobs=old_logprobs,
        ref_logprobs=ref_logprobs,
        norm_tokens=norm_tokens,
        cu_seqlens=cu_seqlens,
    )
    return options, advantages, per_token


def _token_inputs(
    target_ids: torch.Tensor,
    advantages: torch.Tensor,
    options: LossOptions,
    *,
    mask: torch.Tensor | None,
    old_logprobs: torch.Tensor | None,
    ref_logprobs: torch.Tensor | None,
    norm_tokens: float | torch.Tensor | None,
    cu_seqlens: torch.Tensor | None,
) -> tuple[torch.Tensor, TokenInputs]:
    """What a fused sweep reads, flattened to (rows,): targets (int64), the weights w_t of the loss
    aggregation (known before any sweep: they depend on masks and lengths only), per-token advantages
    and old/ref log-probs (fp32); and the token mask m, (rows,) fp32, for the stats."""
    m = reference.token_mask(target_ids, mask, torch.float32)
    weights = reference.token_weights(
        m, options.loss_agg, norm_tokens=norm_tokens, max_len=options.max_len, cu_seqlens=cu_seqlens
    )
    per_token_adv = reference.expand_advantages(advantages, target_ids.shape, cu_seqlens)

    def flat(x: torch.Tensor | None) -> torch.Tensor | None:
        return None if x is None else x.reshape(-1).float()

    tokens = TokenInputs(
        target_ids.reshape(-1), flat(weights), flat(per_token_adv), flat(old_logprobs), flat(ref_logprobs)
    )
    return m.reshape(-1), tokens


def _output(
    loss: torch.Tensor,
    logp: torch.Tensor,
    entropy: torch.Tensor,
    ratio: torch.Tensor,
    clipped: torch.Tensor,
    kl: torch.Tensor,
    m: torch.Tensor,
    shape: torch.Size,
) -> PGLossOutput:
    """`PGLossOutput` from a fused op's per-row (rows,) outputs; m: the token mask from `_token_inputs`."""
    stats = reference.masked_stats(m, {"ratio": ratio, "clipped": clipped, "kl": kl}, entropy)
    return PGLossOutput(loss, logp.detach().reshape(shape), entropy.detach().reshape(shape), stats)
