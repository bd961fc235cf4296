"""Public entry points of the loss op: validate and normalise arguments, then dispatch by backend.

The O(N) work (advantage broadcast, aggregation weights w_t, stats) happens here in torch; the fused
backends only do the O(N*V) part (see `exprl.kernels.fused`).
The `triton` backend module is imported on first use, so CPU-only installs never import triton.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import numbers
import os

import torch

from exprl.kernels import fused, reference
from exprl.kernels.reference import IGNORE_INDEX, KL_ESTIMATORS, LOSS_AGGS, ObjectiveOptions, PGLossOutput

BACKENDS = ("auto", "triton", "torch", "eager")
_FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
_HAS_TRITON = importlib.util.find_spec("triton") is not None


def _check_number(name: str, value: object, *, low: float | None = None, strict: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if low is not None and (value <= low if strict else value < low):
        raise ValueError(f"{name} must be {'>' if strict else '>='} {low}, got {value}")
    return value


def _check_token_tensor(name: str, value: object, shape: torch.Size, device: torch.device) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if value.shape != shape:
        raise ValueError(f"{name} must have the shape of target_ids {tuple(shape)}, got {tuple(value.shape)}")
    if value.device != device:
        raise ValueError(f"{name} is on {value.device} but logits are on {device}")
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
    if not isinstance(target_ids, torch.Tensor):
        raise TypeError(f"target_ids must be a torch.Tensor, got {type(target_ids).__name__}")
    if target_ids.dtype.is_floating_point or target_ids.dtype.is_complex or target_ids.dtype == torch.bool:
        raise TypeError(f"target_ids must be an integer (int64) tensor, got {target_ids.dtype}")
    if target_ids.shape != logits.shape[:-1]:
        raise ValueError(
            f"target_ids must have shape {tuple(logits.shape[:-1])} (logits without V), "
            f"got {tuple(target_ids.shape)}"
        )
    if target_ids.device != logits.device:
        raise ValueError(f"target_ids is on {target_ids.device} but logits are on {logits.device}")
    vocab = logits.shape[-1]
    if torch.compiler.is_compiling():
        # a value check needs a host sync, which would break the compiled graph: checked in eager only
        return logits, target_ids.long()
    bad = ((target_ids < 0) | (target_ids >= vocab)) & (target_ids != IGNORE_INDEX)
    if target_ids.numel() and bool(bad.any()):
        raise ValueError(
            f"target_ids must lie in [0, {vocab}) or be ignore_index {IGNORE_INDEX}, "
            f"got {int(target_ids[bad].reshape(-1)[0])}"
        )
    return logits, target_ids.long()


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


def _check_cu_seqlens(cu_seqlens: object, logits: torch.Tensor) -> torch.Tensor | None:
    if cu_seqlens is None:
        return None
    if not isinstance(cu_seqlens, torch.Tensor):
        raise TypeError(f"cu_seqlens must be a torch.Tensor, got {type(cu_seqlens).__name__}")
    if logits.dim() != 2:
        raise ValueError("cu_seqlens applies to packed (N, V) logits only, got (B, T, V) logits")
    if cu_seqlens.dtype.is_floating_point or cu_seqlens.dtype == torch.bool or cu_seqlens.dim() != 1:
        raise TypeError(
            f"cu_seqlens must be a 1-D integer tensor, got {cu_seqlens.dtype} {tuple(cu_seqlens.shape)}"
        )
    cu = cu_seqlens.long().to(logits.device)
    if len(cu) < 2 or int(cu[0]) != 0 or int(cu[-1]) != logits.shape[0] or bool((cu[1:] < cu[:-1]).any()):
        raise ValueError(
            f"cu_seqlens must be non-decreasing from 0 to N={logits.shape[0]} with at least 2 entries, "
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
        raise ValueError(f"advantages is on {advantages.device} but logits are on {target_ids.device}")
    shape = target_ids.shape
    per_sequence = None
    if len(shape) == 2:
        per_sequence = (shape[0],)
    elif cu_seqlens is not None:
        per_sequence = (len(cu_seqlens) - 1,)
    if advantages.shape != shape and advantages.shape != per_sequence:
        allowed = f"{tuple(shape)}" + (f" or one per sequence {per_sequence}" if per_sequence else "")
        raise ValueError(f"advantages must have shape {allowed}, got {tuple(advantages.shape)}")
    return advantages


def _check_options(
    loss_agg: object,
    kl_estimator: object,
    kl_coef: float,
    ref_logprobs: torch.Tensor | None,
    norm_tokens: object,
    max_len: object,
    cu_seqlens: torch.Tensor | None,
    logits: torch.Tensor,
) -> None:
    if loss_agg not in LOSS_AGGS:
        raise ValueError(f"loss_agg must be one of {LOSS_AGGS}, got {loss_agg!r}")
    if kl_estimator not in KL_ESTIMATORS:
        raise ValueError(f"kl_estimator must be one of {KL_ESTIMATORS}, got {kl_estimator!r}")
    if kl_coef > 0 and ref_logprobs is None:
        raise ValueError("ref_logprobs is required when kl_coef > 0")
    if norm_tokens is not None:
        if loss_agg != "token-mean":
            raise ValueError(f"norm_tokens applies to loss_agg='token-mean' only, got loss_agg={loss_agg!r}")
        if isinstance(norm_tokens, torch.Tensor):
            if norm_tokens.numel() != 1 or norm_tokens.is_complex():
                raise ValueError(
                    f"norm_tokens must be a scalar, got a tensor of shape {tuple(norm_tokens.shape)}"
                )
        else:
            _check_number("norm_tokens", norm_tokens, low=0.0)
    if max_len is not None:
        if loss_agg != "seq-mean-token-sum-norm":
            raise ValueError(f"max_len applies to loss_agg='seq-mean-token-sum-norm' only, got {loss_agg!r}")
        if isinstance(max_len, bool) or not isinstance(max_len, numbers.Integral) or max_len <= 0:
            raise ValueError(f"max_len must be a positive integer, got {max_len!r}")
    if loss_agg != "token-mean" and logits.dim() == 2 and cu_seqlens is None:
        raise ValueError(f"cu_seqlens is required for loss_agg={loss_agg!r} with packed (N, V) logits")


def logprobs_and_entropy(
    logits: torch.Tensor, target_ids: torch.Tensor, *, temperature: float = 1.0, backend: str = "auto"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probs of `target_ids` under softmax(logits / temperature) and the entropies; no autograd.

    logits (N, V) or (B, T, V) float32/bfloat16/float16; target_ids (N,) or (B, T) int64 with
    ignore_index -100 (its log-prob is 0). Returns (logprobs, entropy), fp32, shape of target_ids.
    """
    logits, target_ids = _check_logits_and_targets(logits, target_ids)
    temperature = _check_number("temperature", temperature, low=0.0, strict=True)
    backend = _resolve_backend(backend, logits)
    if backend == "eager":
        return reference.logprobs_and_entropy(logits, target_ids, temperature=temperature)
    vocab = logits.shape[-1]
    logp, entropy = fused.logprobs_and_entropy_op(
        logits.detach().reshape(-1, vocab), target_ids.reshape(-1), temperature, backend
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

    logits: (N, V) or (B, T, V), float32/bfloat16/float16, CPU or CUDA.
    target_ids: (N,) or (B, T) int64, ignore_index -100 marks masked tokens.
    advantages: shape of target_ids, or (B,) broadcast over T, or (S,) per packed sequence.
    mask, old_logprobs, ref_logprobs: shape of target_ids (mask bool or float).
    See DESIGN.md §3 for the math; returns `PGLossOutput` (loss differentiable w.r.t. logits only).
    """
    logits, target_ids = _check_logits_and_targets(logits, target_ids)
    device, shape = logits.device, target_ids.shape
    cu_seqlens = _check_cu_seqlens(cu_seqlens, logits)
    advantages = _check_advantages(advantages, target_ids, cu_seqlens)
    if mask is not None:
        mask = _check_token_tensor("mask", mask, shape, device)
        if mask.is_complex():
            raise TypeError(f"mask must be bool or float, got {mask.dtype}")
    if old_logprobs is not None:
        old_logprobs = _check_float_tensor("old_logprobs", old_logprobs, shape, device)
    if ref_logprobs is not None:
        ref_logprobs = _check_float_tensor("ref_logprobs", ref_logprobs, shape, device)
    temperature = _check_number("temperature", temperature, low=0.0, strict=True)
    clip_low = _check_number("clip_low", clip_low, low=0.0)
    clip_high = _check_number("clip_high", clip_high, low=0.0)
    if dual_clip is not None:
        dual_clip = _check_number("dual_clip", dual_clip, low=1.0, strict=True)
    kl_coef = _check_number("kl_coef", kl_coef, low=0.0)
    entropy_coef = _check_number("entropy_coef", entropy_coef)
    _check_options(loss_agg, kl_estimator, kl_coef, ref_logprobs, norm_tokens, max_len, cu_seqlens, logits)
    backend = _resolve_backend(backend, logits)
    options = ObjectiveOptions(clip_low, clip_high, dual_clip, kl_coef, kl_estimator, entropy_coef)
    if backend == "eager":
        return reference.entropy_pg_loss(
            logits,
            target_ids,
            advantages,
            mask=mask,
            old_logprobs=old_logprobs,
            ref_logprobs=ref_logprobs,
            temperature=temperature,
            loss_agg=loss_agg,
            norm_tokens=norm_tokens,
            max_len=max_len,
            cu_seqlens=cu_seqlens,
            **dataclasses.asdict(options),
        )
    m = reference.token_mask(target_ids, mask, torch.float32)
    weights = reference.token_weights(
        m, loss_agg, norm_tokens=norm_tokens, max_len=max_len, cu_seqlens=cu_seqlens
    )
    per_token_adv = reference.expand_advantages(advantages, shape, cu_seqlens)

    def flat(x: torch.Tensor | None) -> torch.Tensor | None:
        return None if x is None else x.reshape(-1).float()

    compute_grad = logits.requires_grad and torch.is_grad_enabled()
    loss, logp, entropy, ratio, clipped, kl, _ = fused.entropy_pg_op(
        logits.reshape(-1, logits.shape[-1]),
        target_ids.reshape(-1),
        flat(weights),
        flat(per_token_adv),
        flat(old_logprobs),
        flat(ref_logprobs),
        temperature,
        *dataclasses.astuple(options),
        backend,
        compute_grad,
    )
    parts = {"ratio": ratio, "clipped": clipped, "kl": kl}
    stats = reference.masked_stats(m.reshape(-1), parts, entropy)
    return PGLossOutput(loss, logp.detach().reshape(shape), entropy.detach().reshape(shape), stats)
