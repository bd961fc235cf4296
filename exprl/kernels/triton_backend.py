"""`triton` backend of the loss op: one program per row, logits read in their own dtype.

Implements `exprl.kernels.backend.LossBackend`: matches `exprl.kernels.reference.logprobs_and_entropy`
and the O(N*V) part of `exprl.kernels.reference.entropy_pg_loss`; the kernel's g is
`reference.dobjective_dlogp`, written out in Triton.

Per row, sweep 1 reads the logits once with an online log-sum-exp and a running sum of
p_j (z_j - max), both in fp32 and in base 2 (one exp2 per element), the max subtracted before
scaling; then the row's log-prob, entropy and g = dl/dlogp are scalars. When the logits need a
gradient, sweep 2 reads the row again and writes dlogits = w (g (onehot - p) - h p (z - mu)) / T,
so a forward+backward costs two reads and one write of N x V and no N x V fp32 temporary exists.
Temperature, clip bounds, coefficients and sizes are runtime arguments (no recompilation); row
offsets are 64-bit and follow the (batch, time) strides of the logits and of the gradient, so
strided views are read in place.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from exprl.kernels.backend import TokenInputs
from exprl.kernels.reference import IGNORE_INDEX, LossOptions

# 4096 bf16 logits = 8 KiB per block: 16 elements (two 16-byte loads) per thread at 8 warps.
MAX_BLOCK_V = 4096


@triton.jit
def _entropy_pg_kernel(
    logits_ptr,
    stride_logits_b,
    stride_logits_t,
    targets_ptr,
    weights_ptr,
    advantages_ptr,
    old_ptr,
    ref_ptr,
    logp_ptr,
    entropy_ptr,
    dlogits_ptr,
    stride_dlogits_b,
    stride_dlogits_t,
    rows_per_batch,
    vocab,
    inv_temperature,
    clip_low,
    clip_high,
    dual_clip,
    kl_coef,
    entropy_coef,
    HAS_OLD: tl.constexpr,
    HAS_REF: tl.constexpr,
    USE_DUAL_CLIP: tl.constexpr,
    KL_ESTIMATOR: tl.constexpr,
    COMPUTE_GRAD: tl.constexpr,
    IGNORE_INDEX: tl.constexpr,
    BLOCK_V: tl.constexpr,
):
    LOG2E: tl.constexpr = 1.4426950408889634
    LN2: tl.constexpr = 0.6931471805599453
    row = tl.program_id(0).to(tl.int64)
    batch = row // rows_per_batch
    time = row - batch * rows_per_batch
    row_ptr = logits_ptr + batch * stride_logits_b + time * stride_logits_t
    cols = tl.arange(0, BLOCK_V)
    # base-2 units: d = (x - m) * scale with scale = log2(e) / temperature, one exp2 per element; the
    # max m is taken over the raw logits and subtracted before scaling, so x - m is exact near the max
    # (scaling first rounds every logit by ~|x| eps: twice eager's log-prob error at |x| ~ 1e4)
    scale = inv_temperature * LOG2E

    # sweep 1: running max m (finite start so an all -inf block gives alpha = 1, not nan),
    # per-lane sums s = sum 2^d and t = sum 2^d d, rescaled when m grows
    m = tl.max(tl.full([BLOCK_V], -3.0e38, tl.float32), axis=0)
    s = tl.zeros([BLOCK_V], dtype=tl.float32)
    t = tl.zeros([BLOCK_V], dtype=tl.float32)
    for start in range(0, vocab, BLOCK_V):
        idx = start + cols
        x = tl.load(row_ptr + idx, mask=idx < vocab, other=float("-inf")).to(tl.float32)
        m_new = tl.maximum(m, tl.max(x, axis=0))
        # clamped before scaling: from the -3e38 start, (m - m_new) * scale would overflow to -inf, and
        # -inf * s (= 0) is nan; any shift below -150 already gives alpha = 0
        shift = tl.maximum(m - m_new, -1.0e20) * scale
        alpha = tl.exp2(shift)
        d = (x - m_new) * scale
        e = tl.exp2(d)
        t = alpha * (t + shift * s) + tl.where(e > 0.0, e * d, 0.0)
        s = alpha * s + e
        m = m_new
    sum_exp = tl.sum(s, axis=0)
    log2_sum = tl.log2(sum_exp)
    shifted_mu = tl.sum(t, axis=0) / sum_exp  # (mu - max) in base-2 units
    entropy = LN2 * (log2_sum - shifted_mu)

    target = tl.load(targets_ptr + row)
    valid = target != IGNORE_INDEX
    x_target = tl.load(row_ptr + tl.where(valid, target, 0)).to(tl.float32)
    logp = tl.where(valid, LN2 * ((x_target - m) * scale - log2_sum), 0.0)
    tl.store(logp_ptr + row, logp)
    tl.store(entropy_ptr + row, entropy)

    if COMPUTE_GRAD:
        # g = dl/dlogp of reference.token_objective
        adv = tl.load(advantages_ptr + row)
        ratio = tl.exp(logp - tl.load(old_ptr + row)) if HAS_OLD else 1.0
        pg_unclipped = -adv * ratio
        pg_clipped = -adv * tl.minimum(tl.maximum(ratio, 1.0 - clip_low), 1.0 + clip_high)
        active = pg_unclipped >= pg_clipped
        if USE_DUAL_CLIP:
            active = active & ((adv >= 0.0) | (-adv * dual_clip >= pg_unclipped))
        g = tl.where(active, pg_unclipped, 0.0)
        if HAS_REF:
            ref_gap = tl.load(ref_ptr + row) - logp
            if KL_ESTIMATOR == "k1":
                g += kl_coef
            elif KL_ESTIMATOR == "k2":
                g += -kl_coef * ref_gap
            else:
                g += kl_coef * (1.0 - tl.exp(ref_gap))
        row_scale = tl.load(weights_ptr + row) * inv_temperature
        # dl/dz_j = -p_j (g + h ln2 (d_j - d_mu)) + g onehot_j, with h = -entropy_coef
        h_ln2 = -entropy_coef * LN2
        grad_row_ptr = dlogits_ptr + batch * stride_dlogits_b + time * stride_dlogits_t
        for start in range(0, vocab, BLOCK_V):
            idx = start + cols
            in_row = idx < vocab
            x = tl.load(row_ptr + idx, mask=in_row, other=float("-inf")).to(tl.float32)
            d = (x - m) * scale
            p = tl.exp2(d - log2_sum)
            # p = 0 where x = -inf: its term is 0, not 0 * inf (nan rows keep their nan)
            dz = tl.where(p == 0.0, 0.0, -p * (g + h_ln2 * (d - shifted_mu)))
            dz += tl.where(idx == target, g, 0.0)
            # masked rows get an exact 0 even where their logits are inf or nan
            dz = tl.where(row_scale == 0.0, 0.0, dz * row_scale)
            tl.store(grad_row_ptr + idx, dz.to(dlogits_ptr.dtype.element_ty), mask=in_row)


def _strides(x: torch.Tensor) -> tuple[int, int, int]:
    """(batch stride, time stride, rows per batch) of (N, V) or (B, T, V): (N, V) is one batch row."""
    if x.dim() == 2:
        return 0, x.stride(0), x.shape[0]
    return x.stride(0), x.stride(1), x.shape[1]


def sweep(
    logits: torch.Tensor,
    tokens: TokenInputs,
    options: LossOptions,
    grad: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`LossBackend.sweep`: (logprobs, entropy), (rows,) fp32; fills `grad` with dlogits when given."""
    # the kernel indexes the per-token vectors by row: unit stride (an expanded (B,) advantage has 0)
    targets, weights, advantages, old, ref = (None if v is None else v.contiguous() for v in tokens)
    n, vocab = len(targets), logits.shape[-1]
    logp = torch.empty(n, dtype=torch.float32, device=logits.device)
    entropy = torch.empty_like(logp)
    if n == 0:
        return logp, entropy
    if vocab > 1 and (logits.stride(-1) != 1 or (grad is not None and grad.stride(-1) != 1)):
        raise ValueError("the triton backend needs logits and grad with unit stride over the vocabulary")
    block_v = min(MAX_BLOCK_V, triton.next_power_of_2(vocab))
    num_warps = 8 if block_v >= 2048 else 4
    placeholder = logp  # never read: the constexpr flags switch those loads off
    use_ref = ref is not None and options.kl_coef != 0
    stride_b, stride_t, rows_per_batch = _strides(logits)
    grad_b, grad_t, _ = (0, vocab, 0) if grad is None else _strides(grad)
    _entropy_pg_kernel[(n,)](
        logits,
        stride_b,
        stride_t,
        targets,
        placeholder if weights is None else weights,
        placeholder if advantages is None else advantages,
        placeholder if old is None else old,
        ref if use_ref else placeholder,
        logp,
        entropy,
        placeholder if grad is None else grad,
        grad_b,
        grad_t,
        rows_per_batch,
        vocab,
        1.0 / options.temperature,
        options.clip_low,
        options.clip_high,
        options.dual_clip or 0.0,
        options.kl_coef,
        options.entropy_coef,
        HAS_OLD=old is not None,
        HAS_REF=use_ref,
        USE_DUAL_CLIP=options.dual_clip is not None,
        KL_ESTIMATOR=options.kl_estimator,
        COMPUTE_GRAD=grad is not None,
        IGNORE_INDEX=IGNORE_INDEX,
        BLOCK_V=block_v,
        num_warps=num_warps,
    )
    return logp, entropy
