"""The eager reference of the fused loss op: the spec, written as plain PyTorch math (DESIGN.md §3).

Every backend (`exprl.kernels.torch_fused`, `exprl.kernels.triton_entropy_pg`) must match
`entropy_pg_loss` / `logprobs_and_entropy` below. The small per-token helpers (`expand_advantages`,
`token_weights`, `token_objective`, `weighted_sum`, `masked_stats`) are O(N) and are shared with the
fused backends, which only replace the O(N*V) part: log-softmax, entropy and the gradient w.r.t. the
logits.

This module trusts its arguments; `exprl.kernels.api` validates them first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch

IGNORE_INDEX = -100
LOSS_AGGS = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")
KL_ESTIMATORS = ("k1", "k2", "k3")


@dataclass(frozen=True)
class ObjectiveOptions:
    """The per-token objective's constants (DESIGN.md §3), as validated by `exprl.kernels.api`."""

    clip_low: float = 0.2
    clip_high: float = 0.2
    dual_clip: float | None = None
    kl_coef: float = 0.0
    kl_estimator: str = "k3"
    entropy_coef: float = 0.0


class TokenInputs(NamedTuple):
    """The per-token inputs of a fused backend's sweep, each (N,): targets int64, the rest fp32.

    weights are the w_t of `token_weights`; advantages are per token (`expand_advantages`). old and
    ref log-probs are None when absent; weights and advantages may be None when no gradient is asked.
    """

    targets: torch.Tensor
    weights: torch.Tensor | None
    advantages: torch.Tensor | None
    old_logprobs: torch.Tensor | None
    ref_logprobs: torch.Tensor | None

    def rows(self, start: int, stop: int) -> TokenInputs:
        """The same inputs restricted to rows [start, stop) (views, no copy)."""
        return TokenInputs(*(None if v is None else v[start:stop] for v in self))


@dataclass
class PGLossOutput:
    """What `entropy_pg_loss` returns.

    loss: 0-dim tensor (compute dtype), differentiable w.r.t. the logits.
    logprobs: fp32 (fp64 for fp64 logits), shape of target_ids, detached; 0 where target is ignore_index.
    entropy: fp32 (fp64 for fp64 logits), shape of target_ids, detached.
    stats: 0-dim detached tensors, means over counted tokens: clip_frac, kl (0 without ref_logprobs),
        entropy, ratio.
    """

    loss: torch.Tensor
    logprobs: torch.Tensor
    entropy: torch.Tensor
    stats: dict[str, torch.Tensor]


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp32 for every 16/32-bit input; fp64 input stays fp64 (tests evaluate the spec in fp64)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def token_mask(target_ids: torch.Tensor, mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    """m_t: the mask (1 where None) times 0 on ignore_index targets; shape of target_ids."""
    m = (target_ids != IGNORE_INDEX).to(dtype)
    return m if mask is None else m * mask.to(dtype)


def sequence_lengths(target_shape: torch.Size, cu_seqlens: torch.Tensor | None) -> torch.Tensor:
    """Lengths (S,) int64 of the sequences: rows of a (B, T) batch, or the spans of packed (N,) input."""
    if cu_seqlens is not None:
        return (cu_seqlens[1:] - cu_seqlens[:-1]).long()
    if len(target_shape) != 2:
        raise ValueError("cu_seqlens is required to find the sequences of packed (N,) input")
    batch, length = target_shape
    return torch.full((batch,), length, dtype=torch.long)


def expand_advantages(
    advantages: torch.Tensor, target_shape: torch.Size, cu_seqlens: torch.Tensor | None
) -> torch.Tensor:
    """Per-token advantages of shape `target_shape`: (B,) is broadcast over T, (S,) over packed spans."""
    if advantages.shape == target_shape:
        return advantages
    if len(target_shape) == 2:
        return advantages[:, None].expand(target_shape)
    lengths = sequence_lengths(target_shape, cu_seqlens).to(advantages.device)
    return advantages.repeat_interleave(lengths)


def token_weights(
    m: torch.Tensor,
    loss_agg: str,
    *,
    norm_tokens: float | torch.Tensor | None = None,
    max_len: int | None = None,
    cu_seqlens: torch.Tensor | None = None,
) -> torch.Tensor:
    """The weights w_t of `loss = sum_t w_t l_t` (shape and dtype of the token mask `m`).

    m: per-token mask, 0 on masked and ignore_index tokens. For per-sequence modes the sequences
    are the rows of a (B, T) mask, or the spans of `cu_seqlens` for a packed (N,) mask.
    """
    if loss_agg == "token-mean":
        count = (
            m.sum() if norm_tokens is None else torch.as_tensor(norm_tokens, dtype=m.dtype, device=m.device)
        )
        return m / count.clamp(min=1)
    lengths = sequence_lengths(m.shape, cu_seqlens).to(m.device)
    seq_of_token = torch.repeat_interleave(torch.arange(len(lengths), device=m.device), lengths)
    flat = m.reshape(-1)
    tokens_per_seq = torch.zeros(len(lengths), dtype=m.dtype, device=m.device).index_add_(
        0, seq_of_token, flat
    )
    num_seqs = (tokens_per_seq > 0).sum().clamp(min=1).to(m.dtype)
    if loss_agg == "seq-mean-token-mean":
        n_s = tokens_per_seq[seq_of_token]
        w = torch.where(n_s > 0, flat / (num_seqs * n_s), torch.zeros_like(flat))
    elif loss_agg == "seq-mean-token-sum":
        w = flat / num_seqs
    elif loss_agg == "seq-mean-token-sum-norm":
        constant = max_len if max_len is not None else int(m.shape[-1] if m.dim() == 2 else lengths.max())
        w = flat / (num_seqs * constant)
    else:
        raise ValueError(f"loss_agg must be one of {LOSS_AGGS}, got {loss_agg!r}")
    return w.reshape(m.shape)


def token_objective(
    logp: torch.Tensor,
    entropy: torch.Tensor,
    advantages: torch.Tensor,
    old_logprobs: torch.Tensor | None,
    ref_logprobs: torch.Tensor | None,
    options: ObjectiveOptions,
) -> dict[str, torch.Tensor]:
    """Per-token objective l = pg + kl_coef * kl - entropy_coef * H, plus its parts for the stats.

    All tensors share one shape and dtype. Returns l, ratio, clipped (bool: the clip or dual clip
    is active, so the ratio gets no gradient) and kl (zeros without ref_logprobs).
    """
    old = logp.detach() if old_logprobs is None else old_logprobs
    ratio = torch.exp(logp - old)
    pg_unclipped = -advantages * ratio
    pg = torch.maximum(pg_unclipped, -advantages * ratio.clamp(1 - options.clip_low, 1 + options.clip_high))
    if options.dual_clip is not None:
        pg = torch.where(advantages < 0, torch.minimum(pg, -advantages * options.dual_clip), pg)
    if ref_logprobs is None:
        kl = torch.zeros_like(logp)
    else:
        d = ref_logprobs - logp
        kl = {"k1": -d, "k2": 0.5 * d * d, "k3": torch.exp(d) - d - 1}[options.kl_estimator]
    objective = pg + options.kl_coef * kl - options.entropy_coef * entropy
    return {"l": objective, "ratio": ratio, "clipped": pg != pg_unclipped, "kl": kl}


def weighted_sum(w: torch.Tensor, objective: torch.Tensor) -> torch.Tensor:
    """loss = sum_t w_t l_t (0-dim); tokens with w_t = 0 add nothing, even where l_t is inf or nan."""
    return torch.where(w != 0, w * objective, 0).sum()


def masked_stats(
    m: torch.Tensor, parts: dict[str, torch.Tensor], entropy: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Means over counted tokens (weights m) of clip_frac, kl, entropy and ratio; 0 when none counts."""
    count = m.sum().clamp(min=1)

    def mean(x: torch.Tensor) -> torch.Tensor:
        return (torch.where(m != 0, x.detach().to(m.dtype), 0) * m).sum() / count

    return {
        "clip_frac": mean(parts["clipped"]),
        "kl": mean(parts["kl"]),
        "entropy": mean(entropy),
        "ratio": mean(parts["ratio"]),
    }


def _log_softmax_stats(logits: torch.Tensor, target_ids: torch.Tensor, temperature: float):
    """logp of the targets (0 where ignored) and entropy, keeping autograd; shapes of target_ids."""
    z = logits.to(compute_dtype(logits.dtype)) / temperature
    lse = torch.logsumexp(z, dim=-1)
    p = torch.softmax(z, dim=-1)
    # p_j * z_j is 0 where z_j = -inf (p_j = 0), not nan
    mu = (p * z.masked_fill(z == float("-inf"), 0)).sum(-1)
    entropy = lse - mu
    valid = target_ids != IGNORE_INDEX
    z_target = z.gather(-1, target_ids.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    logp = torch.where(valid, z_target - lse, torch.zeros_like(lse))
    return logp, entropy


def logprobs_and_entropy(
    logits: torch.Tensor, target_ids: torch.Tensor, *, temperature: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probs of target_ids and entropies, (shape of target_ids) fp32, no autograd."""
    with torch.no_grad():
        return _log_softmax_stats(logits, target_ids, temperature)


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
) -> PGLossOutput:
    """Clipped policy-gradient loss with KL and entropy terms (DESIGN.md §3), plain autograd.

    logits (N, V) or (B, T, V); target_ids, mask, old/ref_logprobs of shape (N,) or (B, T);
    advantages of that shape or one per sequence.
    """
    dtype = compute_dtype(logits.dtype)
    logp, entropy = _log_softmax_stats(logits, target_ids, temperature)
    m = token_mask(target_ids, mask, dtype)
    adv = expand_advantages(advantages, target_ids.shape, cu_seqlens).to(dtype)
    parts = token_objective(
        logp,
        entropy,
        adv,
        None if old_logprobs is None else old_logprobs.to(dtype),
        None if ref_logprobs is None else ref_logprobs.to(dtype),
        ObjectiveOptions(clip_low, clip_high, dual_clip, kl_coef, kl_estimator, entropy_coef),
    )
    w = token_weights(m, loss_agg, norm_tokens=norm_tokens, max_len=max_len, cu_seqlens=cu_seqlens)
    loss = weighted_sum(w, parts["l"])
    return PGLossOutput(loss, logp.detach(), entropy.detach(), masked_stats(m, parts, entropy))
