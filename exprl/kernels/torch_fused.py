"""`torch` backend of the loss op for CPU tensors: fused over the vocabulary, chunked over rows.

Matches `exprl.kernels.reference.logprobs_and_entropy` and the O(N*V) part of
`exprl.kernels.reference.entropy_pg_loss`. Each chunk of rows is read once into one fp32 buffer;
log-sum-exp, entropy, the target log-probs and (when asked) the gradient w.r.t. the logits are
computed from it before the next chunk, so each worker holds two chunk-sized fp32 temporaries and
the only N x V allocation is the gradient itself, in the logits' dtype.

Threads: the rows are split into one slab per intra-op thread, each swept by a Python thread whose
torch ops run single-threaded (torch releases the GIL inside ops). Small per-chunk ops parallelised
by OpenMP instead pay a thread barrier each, which costs milliseconds on a loaded machine; the intra-op
thread count is set to 1 for the duration of the call and restored after.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import torch

from exprl.kernels.reference import IGNORE_INDEX, ObjectiveOptions, TokenInputs

# ~1 MiB of fp32 per chunk buffer: the chunk stays in cache across the ~12 passes made over it
CHUNK_ELEMENTS = 1 << 18
# -inf logits are moved to this finite value so that p_j * (z_j - mu) is 0 * finite = 0, not nan
_NEG_FINITE = -1e30


def dobjective_dlogp(
    logp: torch.Tensor,
    advantages: torch.Tensor,
    old_logprobs: torch.Tensor | None,
    ref_logprobs: torch.Tensor | None,
    options: ObjectiveOptions,
) -> torch.Tensor:
    """g = dl/dlogp of `reference.token_objective`, per token (same shape), fp32."""
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


def _in_row_slabs(n: int, vocab: int, sweep_rows: Callable[[int, int], None]) -> None:
    """Calls sweep_rows(start, stop) on contiguous slabs covering [0, n), one per thread."""
    rows_per_chunk = max(1, CHUNK_ELEMENTS // vocab)
    threads = min(torch.get_num_threads(), math.ceil(n / rows_per_chunk))
    if threads <= 1:
        sweep_rows(0, n)
        return
    bounds = [n * i // threads for i in range(threads + 1)]

    def sweep_slab(start: int, stop: int) -> None:
        with torch.no_grad():  # grad mode is per thread: a fresh thread has it on
            sweep_rows(start, stop)

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(sweep_slab, bounds[:-1], bounds[1:]))
    finally:
        torch.set_num_threads(previous)


def _sweep(logits, targets, temperature, logp, entropy, row_start, row_stop):
    """Walks rows [row_start, row_stop) chunk by chunk, filling logp and entropy (N,) and yielding, per
    chunk: (start, stop, buf = z - max(z) with -inf moved to a finite value, p = softmax(z), mu - max(z),
    valid). buf and p are the sweep's only chunk-sized fp32 temporaries, reused from chunk to chunk.
    """
    vocab = logits.shape[1]
    rows_per_chunk = max(1, CHUNK_ELEMENTS // vocab)
    buf_all = torch.empty(
        min(row_stop - row_start, rows_per_chunk), vocab, dtype=torch.float32, device=logits.device
    )
    expz_all = torch.empty_like(buf_all)
    for start in range(row_start, row_stop, rows_per_chunk):
        stop = min(row_stop, start + rows_per_chunk)
        chunk, buf, expz = logits[start:stop], buf_all[: stop - start], expz_all[: stop - start]
        buf.copy_(chunk)
        if temperature != 1.0:
            buf.mul_(1.0 / temperature)
        zmax = buf.amax(dim=-1, keepdim=True)
        buf.sub_(zmax).clamp_(min=_NEG_FINITE)
        torch.exp(buf, out=expz)
        sumexp = expz.sum(dim=-1)
        shifted_mu = torch.linalg.vecdot(expz, buf) / sumexp
        log_sumexp = torch.log(sumexp)
        entropy[start:stop] = log_sumexp - shifted_mu
        chunk_targets = targets[start:stop]
        valid = chunk_targets != IGNORE_INDEX
        rows = torch.arange(stop - start, device=logits.device)
        # read the target logit from the input: buf holds clamped values
        z_target = chunk[rows, chunk_targets.clamp(min=0)].float() / temperature
        logp[start:stop] = torch.where(valid, z_target - zmax.squeeze(-1) - log_sumexp, 0.0)
        yield start, stop, buf, expz.div_(sumexp.unsqueeze(-1)), shifted_mu, valid


def logprobs_and_entropy(
    logits: torch.Tensor, targets: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """logits (N, V), targets (N,) int64 -> (logprobs, entropy), (N,) fp32 each."""
    logp = torch.empty(len(targets), dtype=torch.float32, device=logits.device)
    entropy = torch.empty_like(logp)

    def sweep_rows(row_start: int, row_stop: int) -> None:
        for _ in _sweep(logits, targets, temperature, logp, entropy, row_start, row_stop):
            pass

    _in_row_slabs(*logits.shape, sweep_rows)
    return logp, entropy


def entropy_pg_forward(
    logits: torch.Tensor,
    tokens: TokenInputs,
    *,
    temperature: float,
    options: ObjectiveOptions,
    compute_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """One sweep: (logprobs (N,) fp32, entropy (N,) fp32, dlogits (N, V) logits dtype or None).

    dlogits = w_t * dl_t/dz / temperature is the gradient of sum_t w_t l_t w.r.t. the logits.
    logits (N, V); tokens: the (N,) per-token inputs (weights and advantages needed for the gradient).
    """
    if not compute_grad:
        logp, entropy = logprobs_and_entropy(logits, tokens.targets, temperature)
        return logp, entropy, None
    logp = torch.empty(len(tokens.targets), dtype=torch.float32, device=logits.device)
    entropy = torch.empty_like(logp)
    dlogits = torch.empty_like(logits, memory_format=torch.contiguous_format)

    def sweep_rows(row_start: int, row_stop: int) -> None:
        sweep = _sweep(logits, tokens.targets, temperature, logp, entropy, row_start, row_stop)
        for start, stop, buf, p, shifted_mu, valid in sweep:
            chunk = tokens.rows(start, stop)
            g = dobjective_dlogp(
                logp[start:stop], chunk.advantages, chunk.old_logprobs, chunk.ref_logprobs, options
            )
            scale = chunk.weights / temperature
            # dl/dz_j = g (onehot_j - p_j) - h p_j (z_j - mu), h = -entropy_coef
            term = buf.sub_(shifted_mu.unsqueeze(-1)).mul_(p).mul_(options.entropy_coef)
            term.addcmul_(p, g.unsqueeze(-1), value=-1.0).mul_(scale.unsqueeze(-1))
            # masked rows get an exact 0 even where their g is inf or nan
            term[scale == 0] = 0.0
            local = torch.nonzero(valid & (scale != 0)).squeeze(-1)
            cols = chunk.targets[local]
            term[local, cols] += g[local] * scale[local]
            dlogits[start:stop].copy_(term)

    _in_row_slabs(*logits.shape, sweep_rows)
    return logp, entropy, dlogits
