"""`torch` backend of the loss op for CPU tensors: fused over the vocabulary, chunked over rows.

Implements `exprl.kernels.backend.LossBackend`: matches `exprl.kernels.reference.logprobs_and_entropy`
and the O(N*V) part of `exprl.kernels.reference.entropy_pg_loss`, with the per-token g from
`reference.dobjective_dlogp`. Each chunk of rows is read once into one fp32 buffer; log-sum-exp,
entropy, the target log-probs and (when asked) the gradient w.r.t. the logits are computed from it
before the next chunk, so each worker holds two chunk-sized fp32 temporaries and the only N x V
memory written is the caller's gradient tensor, in its own dtype.

Threads: the rows are split into one slab per intra-op thread, each swept by a Python thread whose
torch ops run single-threaded (torch releases the GIL inside ops). Small per-chunk ops parallelised
by OpenMP instead pay a thread barrier each, which costs milliseconds on a loaded machine; the intra-op
thread count is set to 1 for the duration of the call and restored after.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import torch

from exprl.kernels.backend import TokenInputs
from exprl.kernels.reference import IGNORE_INDEX, LossOptions, dobjective_dlogp

# ~1 MiB of fp32 per chunk buffer: the chunk stays in cache across the ~12 passes made over it
CHUNK_ELEMENTS = 1 << 18
# -inf logits are moved to this finite value so that p_j * (z_j - mu) is 0 * finite = 0, not nan
_NEG_FINITE = -1e30

# (first row, logits block (rows, V), grad block or None): 2-D views covering the rows in order
Block = tuple[int, torch.Tensor, torch.Tensor | None]


def _as_rows(x: torch.Tensor) -> torch.Tensor | None:
    """x as a (rows, V) view when its strides allow one, else None (no copy either way)."""
    if x.dim() == 2:
        return x
    batch, time, vocab = x.shape
    if batch <= 1 or time <= 1 or x.stride(0) == time * x.stride(1):
        return x.view(batch * time, vocab)
    return None


def _blocks(logits: torch.Tensor, grad: torch.Tensor | None) -> list[Block]:
    """One (rows, V) block when the logits (and grad) view as one; else one block per batch row."""
    flat_logits = _as_rows(logits)
    flat_grad = None if grad is None else _as_rows(grad)
    if flat_logits is not None and (grad is None or flat_grad is not None):
        return [(0, flat_logits, flat_grad)]
    time = logits.shape[1]
    return [(b * time, logits[b], None if grad is None else grad[b]) for b in range(logits.shape[0])]


def _chunks(blocks: list[Block], row_start: int, row_stop: int, rows_per_chunk: int) -> Iterator[Block]:
    """The blocks cut to rows [row_start, row_stop), in chunks of at most rows_per_chunk rows."""
    for first, block_logits, block_grad in blocks:
        lo, hi = max(row_start, first), min(row_stop, first + len(block_logits))
        for start in range(lo, hi, rows_per_chunk):
            stop = min(hi, start + rows_per_chunk)
            local = slice(start - first, stop - first)
            yield start, block_logits[local], None if block_grad is None else block_grad[local]


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


def sweep(
    logits: torch.Tensor,
    tokens: TokenInputs,
    options: LossOptions,
    grad: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`LossBackend.sweep`: (logprobs, entropy), (rows,) fp32; fills `grad` with dlogits when given."""
    vocab = logits.shape[-1]
    n = len(tokens.targets)
    logp = torch.empty(n, dtype=torch.float32, device=logits.device)
    entropy = torch.empty_like(logp)
    blocks = _blocks(logits, grad)
    inv_temperature = 1.0 / options.temperature
    rows_per_chunk = max(1, CHUNK_ELEMENTS // vocab)

    def sweep_rows(row_start: int, row_stop: int) -> None:
        buf_all = torch.empty(
            min(row_stop - row_start, rows_per_chunk), vocab, dtype=torch.float32, device=logits.device
        )
        expz_all = torch.empty_like(buf_all)
        for start, chunk, grad_chunk in _chunks(blocks, row_start, row_stop, rows_per_chunk):
            stop = start + len(chunk)
            buf, expz = buf_all[: stop - start], expz_all[: stop - start]
            chunk_targets = tokens.targets[start:stop]
            valid = chunk_targets != IGNORE_INDEX
            rows = torch.arange(stop - start, device=logits.device)
            # read the target logit before anything is written: grad may alias the logits
            x_target = chunk[rows, chunk_targets.clamp(min=0)].float()
            buf.copy_(chunk)
            # the max is subtracted before scaling: x - max is exact for the logits near the max, so
            # log-probs of fp32 logits near +-1e4 keep eager's precision (scaling first rounds each z)
            xmax = buf.amax(dim=-1, keepdim=True)
            buf.sub_(xmax)
            if inv_temperature != 1.0:
                buf.mul_(inv_temperature)
            buf.clamp_(min=_NEG_FINITE)
            torch.exp(buf, out=expz)
            sumexp = expz.sum(dim=-1)
            shifted_mu = torch.linalg.vecdot(expz, buf) / sumexp
            log_sumexp = torch.log(sumexp)
            entropy[start:stop] = log_sumexp - shifted_mu
            z_target = (x_target - xmax.squeeze(-1)) * inv_temperature
            chunk_logp = torch.where(valid, z_target - log_sumexp, 0.0)
            logp[start:stop] = chunk_logp
            if grad_chunk is None:
                continue
            p = expz.div_(sumexp.unsqueeze(-1))
            g = dobjective_dlogp(
                chunk_logp,
                tokens.advantages[start:stop],
                None if tokens.old_logprobs is None else tokens.old_logprobs[start:stop],
                None if tokens.ref_logprobs is None else tokens.ref_logprobs[start:stop],
                options,
            )
            scale = tokens.weights[start:stop] * inv_temperature
            # dl/dz_j = g (onehot_j - p_j) - h p_j (z_j - mu), h = -entropy_coef
            term = buf.sub_(shifted_mu.unsqueeze(-1)).mul_(p).mul_(options.entropy_coef)
            term.addcmul_(p, g.unsqueeze(-1), value=-1.0).mul_(scale.unsqueeze(-1))
            # masked rows get an exact 0 even where their g is inf or nan
            term[scale == 0] = 0.0
            local = torch.nonzero(valid & (scale != 0)).squeeze(-1)
            cols = chunk_targets[local]
            term[local, cols] += g[local] * scale[local]
            grad_chunk.copy_(term)

    _in_row_slabs(n, vocab, sweep_rows)
    return logp, entropy
