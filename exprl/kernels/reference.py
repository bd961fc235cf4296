"""The eager reference of the fused loss op: the spec, written as plain PyTorch math (docs/design.md §3).

Every backend (`exprl.kernels.torch_backend`, `exprl.kernels.triton_backend`) must match
`entropy_pg_loss` / `logprobs_and_entropy` below. The small per-token helpers (`expand_advantages`,
`token_weights`, `token_objective`, `dobjective_dlogp`, `weighted_sum`, `masked_stats`) are O(N) and are
shared with the fused backends, which only replace the O(N*V) part: log-softmax, entropy and the
gradient w.r.t. the logits.

This module also holds the op's constants and its one options object, `LossOptions`: a scalar option
is one field there (checked in `__post_init__`), read by `token_objective`, `dobjective_dlogp` and the
Triton kernel. Tensors (mask, log-probs, cu_seqlens, norm_tokens) are per-call data, checked by
`exprl.kernels.op`; the functions here trust them.
"""

from __future__ import annotations

import ast
import dataclasses
import math
import numbers
from dataclasses import dataclass
from typing import Any

import torch

IGNORE_INDEX = -100
LOSS_AGGS = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")
KL_ESTIMATORS = ("k1", "k2", "k3")


def check_number(name: str, value: object, *, low: float | None = None, strict: bool = False) -> float:
    """value as a finite float, >= low (> low when strict); TypeError/ValueError naming `name` if not."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if low is not None and (value <= low if strict else value < low):
        raise ValueError(f"{name} must be {'>' if strict else '>='} {low}, got {value}")
    return value


@dataclass(frozen=True)
class LossOptions:
    """The scalar options of the loss (docs/design.md §3), checked on construction; carried unchanged from
    `exprl.kernels.op` to the backends.

    temperature: logits are divided by it (> 0). clip_low, clip_high: the ratio is clipped to
    [1 - clip_low, 1 + clip_high]. dual_clip: c > 1 caps -A r at -A c where A < 0 (None: off).
    kl_coef, kl_estimator: weight (>= 0) and estimator of the KL to the reference policy.
    entropy_coef: weight of the entropy bonus (the loss gets -entropy_coef * H). loss_agg: how token
    losses are aggregated (`token_weights`). max_len: the constant of seq-mean-token-sum-norm
    (None: T of a (B, T) batch, or the longest packed sequence).
    """

    temperature: float = 1.0
    clip_low: float = 0.2
    clip_high: float = 0.2
    dual_clip: float | None = None
    kl_coef: float = 0.0
    kl_estimator: str = "k3"
    entropy_coef: float = 0.0
    loss_agg: str = "token-mean"
    max_len: int | None = None

    def __post_init__(self) -> None:
        checked = {
            "temperature": check_number("temperature", self.temperature, low=0.0, strict=True),
            "clip_low": check_number("clip_low", self.clip_low, low=0.0),
            "clip_high": check_number("clip_high", self.clip_high, low=0.0),
            "kl_coef": check_number("kl_coef", self.kl_coef, low=0.0),
            "entropy_coef": check_number("entropy_coef", self.entropy_coef),
        }
        if self.dual_clip is not None:
            checked["dual_clip"] = check_number("dual_clip", self.dual_clip, low=1.0, strict=True)
        for name, value in checked.items():
            object.__setattr__(self, name, value)
        if self.kl_estimator not in KL_ESTIMATORS:
            raise ValueError(f"kl_estimator must be one of {KL_ESTIMATORS}, got {self.kl_estimator!r}")
        if self.loss_agg not in LOSS_AGGS:
            raise ValueError(f"loss_agg must be one of {LOSS_AGGS}, got {self.loss_agg!r}")
        if self.max_len is not None:
            if self.loss_agg != "seq-mean-token-sum-norm":
                raise ValueError(
                    f"max_len applies to loss_agg='seq-mean-token-sum-norm' only, got {self.loss_agg!r}"
                )
            if isinstance(self.max_len, bool) or not isinstance(self.max_len, numbers.Integral):
                raise ValueError(f"max_len must be a positive integer, got {self.max_len!r}")
            if self.max_len <= 0:
                raise ValueError(f"max_len must be a positive integer, got {self.max_len!r}")
            object.__setattr__(self, "max_len", int(self.max_len))

    def encode(self) -> str:
        """The options as one string, how they cross the `torch.library` op schema (it takes no objects);
        plain string formatting, which torch.compile traces (json.dumps it does not)."""
        return repr({field.name: getattr(self, field.name) for field in dataclasses.fields(self)})

    @classmethod
    def decode(cls, text: str) -> LossOptions:
        return cls(**ast.literal_eval(text))


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
    """Per-token advantages of shape `target_shape`: (B,) is broadcast over T, (S,) or (S, 1) over
    packed spans (shape (N,) is per token)."""
    if advantages.shape == target_shape:
        return advantages
    if len(target_shape) == 2:
        return advantages[:, None].expand(target_shape)
    lengths = sequence_lengths(target_shape, cu_seqlens).to(advantages.device)
    return advantages.reshape(-1).repeat_interleave(lengths)


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
    options: LossOptions,
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


def dobjective_dlogp(
    logp: torch.Tensor,
    advantages: torch.Tensor,
    old_logprobs: torch.Tensor | None,
    ref_logprobs: torch.Tensor | None,
    options: LossOptions,
) -> torch.Tensor:
    """g = dl/dlogp of `token_objective` in closed form, per token (same shape and dtype as logp).

    The fused backends need it inside their sweep, where autograd is not available; the entropy term
    enters the logits' gradient separately (dl/dH = -entropy_coef).
    """
    ratio = torch.ones_like(logp) if old_logprobs is None else torch.exp(logp - old_logprobs)
    pg_unclipped = -advantages * ratio
    pg_clipped = -advantages * ratio.clamp(1 - options.clip_low, 1 + options.clip_high)
    # the ratio gets a gradient only where the unclipped branch is the one taken
    active = pg_unclipped >= pg_clipped
    if options.dual_clip is not None:
        active &= ~((advantages < 0) & (-advantages * options.dual_clip < pg_unclipped))
    g = torch.where(active, pg_unclipped, 0.0)
    if ref_logprobs is not None and options.kl_coef != 0:
        d = ref_logprobs - logp
        if options.kl_estimator == "k1":
            g = g + options.kl_coef
        elif options.kl_estimator == "k2":
            g = g - options.kl_coef * d
        else:
            g = g + options.kl_coef * (1 - torch.exp(d))
    return g


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
    norm_tokens: float | torch.Tensor | None = None,
    cu_seqlens: torch.Tensor | None = None,
    **options: Any,
) -> PGLossOutput:
    """Clipped policy-gradient loss with KL and entropy terms (docs/design.md §3), plain autograd.

    logits (N, V) or (B, T, V); target_ids, mask, old/ref_logprobs of shape (N,) or (B, T);
    advantages of that shape or one per sequence; `options` are the fields of `LossOptions`.
    """
    opts = LossOptions(**options)
    dtype = compute_dtype(logits.dtype)
    logp, entropy = _log_softmax_stats(logits, target_ids, opts.temperature)
    m = token_mask(target_ids, mask, dtype)
    adv = expand_advantages(advantages, target_ids.shape, cu_seqlens).to(dtype)
    parts = token_objective(
        logp,
        entropy,
        adv,
        None if old_logprobs is None else old_logprobs.to(dtype),
        None if ref_logprobs is None else ref_logprobs.to(dtype),
        opts,
    )
    w = token_weights(m, opts.loss_agg, norm_tokens=norm_tokens, max_len=opts.max_len, cu_seqlens=cu_seqlens)
    loss = weighted_sum(w, parts["l"])
    return PGLossOutput(loss, logp.detach(), entropy.detach(), masked_stats(m, parts, entropy))
