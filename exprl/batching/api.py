"""The rollout batching API: argument checks, then the compiled op or its reference.

Each function validates its arguments here (errors name the argument), then runs the compiled op
`torch.ops.exprl.<name>` from `exprl._C` when it is built for the tensors' device, else the
pure-PyTorch op of the same name in `exprl.batching.reference` (the spec). `backend()` says which.

Dtypes: token ids, `position_ids`, `attention_mask` int64; `response_mask` bool; `cu_seqlens`
int32 (flash-attn's convention); advantages float32.
"""

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import Tensor

from exprl.batching import reference
from exprl.batching.reference import SEGMENT_MODES

try:
    from exprl import _C  # noqa: F401  (registers torch.ops.exprl.*)

    _EXT_ERROR: str | None = None
except ImportError as error:
    _EXT_ERROR = f"exprl._C is not built ({error}); build it with `python setup.py build_ext --inplace`"


def extension_error() -> str | None:
    """Why the compiled extension is unavailable, or None when it is loaded."""
    return _EXT_ERROR


_forced_backend: Literal["ext", "torch"] | None = None


@contextmanager
def use_backend(name: Literal["ext", "torch", "auto"]) -> Iterator[None]:
    """Run the enclosed calls on the compiled ops ("ext"), the reference ("torch") or whichever
    `backend()` picks ("auto"); for benchmarks and debugging. "ext" needs the extension built."""
    global _forced_backend
    if name not in ("ext", "torch", "auto"):
        raise ValueError(f"backend must be 'ext', 'torch' or 'auto', got {name!r}")
    if name == "ext" and _EXT_ERROR is not None:
        raise RuntimeError(_EXT_ERROR)
    previous, _forced_backend = _forced_backend, None if name == "auto" else name
    try:
        yield
    finally:
        _forced_backend = previous


def backend(device: torch.device | str = "cpu") -> Literal["ext", "torch"]:
    """Which ops serve tensors on `device`: "ext" (exprl._C) or "torch" (the reference)."""
    if _forced_backend is not None:
        return _forced_backend
    if _EXT_ERROR is not None:
        return "torch"
    dispatch_key = "CUDA" if torch.device(device).type == "cuda" else "CPU"
    has_kernel = torch._C._dispatch_has_kernel_for_dispatch_key("exprl::rollout_batch", dispatch_key)
    return "ext" if has_kernel else "torch"


def _ops(device: torch.device):
    return torch.ops.exprl if backend(device) == "ext" else reference


@dataclass
class TrainingBatch:
    """Training tensors of B sequences `prompt_i + response_i`.

    Padded layout: every token tensor is (B, L); packed layout: (N,) with N = sum of lengths.
    `target_ids[t]` is the next token of the same sequence when it is a response token, else -100;
    `response_mask` (bool) is True exactly there, so both align with the logits at t.
    `cu_seqlens` (B+1,) int32 gives the sequence boundaries in the packed order (both layouts).
    `truncated` (B,) bool flags responses cut at the length limit (their reward should be zeroed).
    """

    input_ids: Tensor
    attention_mask: Tensor
    position_ids: Tensor
    response_mask: Tensor
    target_ids: Tensor
    cu_seqlens: Tensor
    prompt_lengths: Tensor
    response_lengths: Tensor
    truncated: Tensor
    layout: Literal["padded", "packed"]
    pad_side: Literal["left", "right"] = "right"

    tensor_fields: ClassVar[tuple[str, ...]] = (
        "input_ids",
        "attention_mask",
        "position_ids",
        "response_mask",
        "target_ids",
        "cu_seqlens",
        "prompt_lengths",
        "response_lengths",
        "truncated",
    )

    def to(self, device: torch.device | str) -> "TrainingBatch":
        moved = {name: getattr(self, name).to(device) for name in self.tensor_fields}
        return TrainingBatch(**moved, layout=self.layout, pad_side=self.pad_side)


@dataclass
class GeneratedBatch:
    """Prompts and responses cut out of a generation output (responses end at their first EOS)."""

    prompts: list[Tensor]
    responses: list[Tensor]
    response_lengths: Tensor
    truncated: Tensor


def _check_side(side: str, name: str) -> bool:
    if side not in ("left", "right"):
        raise ValueError(f"{name} must be 'left' or 'right', got {side!r}")
    return side == "left"


def _check_token_lists(seqs: Sequence[Tensor], name: str, device: torch.device | None = None) -> list[int]:
    """Lengths of B 1-D int64 token tensors, all on one device (`device` when given)."""
    if isinstance(seqs, Tensor) or not isinstance(seqs, Sequence):
        raise TypeError(f"{name} must be a list of 1-D int64 tensors, got {type(seqs).__name__}")
    lengths = []
    for index, seq in enumerate(seqs):
        if not isinstance(seq, Tensor):
            raise TypeError(f"{name}[{index}] must be a torch.Tensor, got {type(seq).__name__}")
        if seq.dtype != torch.long:
            raise TypeError(f"{name}[{index}] must be int64 token ids, got {seq.dtype}")
        if seq.dim() != 1:
            raise ValueError(f"{name}[{index}] must be 1-D, got shape {tuple(seq.shape)}")
        if device is None:
            device = seq.device
        elif seq.device != device:
            raise ValueError(f"{name}[{index}] is on {seq.device} but the batch is on {device}")
        lengths.append(seq.numel())
    return lengths


def _flatten(seqs: Sequence[Tensor], name: str, device: torch.device | None = None) -> tuple[Tensor, Tensor]:
    """Concatenate 1-D int64 token tensors -> (flat (N,) int64, cu_seqlens (B+1,) int64 on CPU)."""
    lengths = _check_token_lists(seqs, name, device)
    device = seqs[0].device if seqs else device or torch.device("cpu")
    flat = torch.cat(list(seqs)) if seqs else torch.empty(0, dtype=torch.long, device=device)
    if flat.numel() > 0 and bool((flat < 0).any()):
        raise ValueError(f"{name} contains negative token ids")
    return flat, _offsets(lengths)


def _offsets(lengths: list[int], dtype: torch.dtype = torch.long) -> Tensor:
    cu_seqlens = torch.zeros(len(lengths) + 1, dtype=dtype)
    torch.cumsum(torch.tensor(lengths, dtype=torch.long), 0, out=cu_seqlens[1:])
    return cu_seqlens


def _check_cu_seqlens(
    cu_seqlens: Tensor, total: int, device: torch.device, name: str = "cu_seqlens"
) -> Tensor:
    if not isinstance(cu_seqlens, Tensor) or cu_seqlens.dtype not in (torch.int32, torch.long):
        raise TypeError(f"{name} must be an int32 or int64 tensor")
    if cu_seqlens.dim() != 1 or cu_seqlens.numel() == 0:
        raise ValueError(f"{name} must be 1-D with B+1 >= 1 entries, got shape {tuple(cu_seqlens.shape)}")
    if cu_seqlens.device != device:
        raise ValueError(f"{name} is on {cu_seqlens.device} but the values are on {device}")
    cu = cu_seqlens.long()
    if int(cu[0]) != 0 or bool((cu[1:] < cu[:-1]).any()):
        raise ValueError(f"{name} must start at 0 and be non-decreasing")
    if int(cu[-1]) != total:
        raise ValueError(f"{name}[-1] = {int(cu[-1])} does not match the {total} packed values")
    return cu


def pad_sequences(
    seqs: Sequence[Tensor], pad_id: int, side: Literal["left", "right"] = "right"
) -> tuple[Tensor, Tensor]:
    """B 1-D int64 tensors -> (ids (B, L) int64 filled with `pad_id`, attention_mask (B, L) int64)."""
    left = _check_side(side, "side")
    flat, cu = _flatten(seqs, "seqs")
    cu = cu.to(flat.device)
    max_len = max((seq.numel() for seq in seqs), default=0)
    ids = _ops(flat.device).unpack(flat, cu, max_len, pad_id, left)
    mask = _ops(flat.device).unpack(torch.ones_like(flat), cu, max_len, 0, left)
    return ids, mask


def pack_sequences(seqs: Sequence[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    """B 1-D int64 tensors -> (flat_ids (N,) int64, cu_seqlens (B+1,) int32, position_ids (N,) int64)."""
    flat, cu = _flatten(seqs, "seqs")
    lengths = cu[1:] - cu[:-1]
    positions = torch.arange(flat.numel()) - torch.repeat_interleave(cu[:-1], lengths)
    return flat, cu.to(device=flat.device, dtype=torch.int32), positions.to(flat.device)


def build_rollout_batch(
    prompts: Sequence[Tensor],
    responses: Sequence[Tensor],
    pad_id: int,
    layout: Literal["padded", "packed"] = "padded",
    pad_side: Literal["left", "right"] = "right",
    truncated: Sequence[bool] | Tensor | None = None,
) -> TrainingBatch:
    """Training tensors of the sequences `prompts[i] + responses[i]` (lists of 1-D int64 tensors).

    `truncated` (optional, one flag per response) is carried into the batch unchanged.
    """
    if layout not in ("padded", "packed"):
        raise ValueError(f"layout must be 'padded' or 'packed', got {layout!r}")
    left = _check_side(pad_side, "pad_side")
    if not isinstance(pad_id, int) or pad_id < 0:
        raise ValueError(f"pad_id must be a non-negative int, got {pad_id!r}")
    prompt_lengths = _check_token_lists(prompts, "prompts")
    device = prompts[0].device if prompts else None
    response_lengths = _check_token_lists(responses, "responses", device)
    if len(prompts) != len(responses):
        raise ValueError(f"prompts has {len(prompts)} sequences but responses has {len(responses)}")
    device = device or (responses[0].device if responses else torch.device("cpu"))
    lengths = [p + r for p, r in zip(prompt_lengths, response_lengths, strict=True)]
    if prompts and device.type == "cpu" and backend(device) == "ext":
        # Reads the lists in place; checks for negative ids while it copies.
        outputs = torch.ops.exprl.rollout_batch_lists(prompts, responses, pad_id, layout == "packed", left)
    else:
        prompt_ids, prompt_cu = _flatten(prompts, "prompts", device)
        response_ids, response_cu = _flatten(responses, "responses", device)
        outputs = _ops(device).rollout_batch(
            prompt_ids,
            prompt_cu.to(device),
            response_ids,
            response_cu.to(device),
            pad_id,
            max(lengths, default=0),
            layout == "packed",
            left,
        )
    return TrainingBatch(
        *outputs,
        cu_seqlens=_offsets(lengths, torch.int32).to(device),
        prompt_lengths=torch.tensor(prompt_lengths, dtype=torch.long, device=device),
        response_lengths=torch.tensor(response_lengths, dtype=torch.long, device=device),
        truncated=_truncated_flags(truncated, len(prompts), device),
        layout=layout,
        pad_side=pad_side,
    )


def _truncated_flags(truncated: Sequence[bool] | Tensor | None, batch: int, device: torch.device) -> Tensor:
    if truncated is None:
        return torch.zeros(batch, dtype=torch.bool, device=device)
    flags = torch.as_tensor(truncated, dtype=torch.bool).to(device)
    if flags.shape != (batch,):
        raise ValueError(f"truncated must hold one flag per response ({batch}), got {tuple(flags.shape)}")
    return flags


def _check_generation(sequences: Tensor, prompt_lengths: Tensor, prompt_width: int) -> Tensor:
    if not isinstance(sequences, Tensor) or sequences.dtype != torch.long:
        raise TypeError("sequences must be an int64 tensor (B, L) of token ids")
    if sequences.dim() != 2:
        raise ValueError(f"sequences must be 2-D (B, L), got shape {tuple(sequences.shape)}")
    if not isinstance(prompt_width, int) or not 0 <= prompt_width <= sequences.shape[1]:
        raise ValueError(f"prompt_width must be an int in [0, {sequences.shape[1]}], got {prompt_width!r}")
    if not isinstance(prompt_lengths, Tensor) or prompt_lengths.dtype not in (torch.int32, torch.long):
        raise TypeError("prompt_lengths must be an int32 or int64 tensor (B,)")
    if prompt_lengths.shape != (sequences.shape[0],):
        raise ValueError(
            f"prompt_lengths must have shape ({sequences.shape[0]},), got {tuple(prompt_lengths.shape)}"
        )
    if prompt_lengths.device != sequences.device:
        raise ValueError(f"prompt_lengths is on {prompt_lengths.device}, sequences on {sequences.device}")
    prompt_lengths = prompt_lengths.long()
    if prompt_lengths.numel() > 0 and bool(((prompt_lengths < 0) | (prompt_lengths > prompt_width)).any()):
        raise ValueError(f"prompt_lengths must lie in [0, prompt_width={prompt_width}]")
    if sequences.numel() > 0 and bool((sequences < 0).any()):
        raise ValueError("sequences contains negative token ids")
    return prompt_lengths


def split_generation(
    sequences: Tensor, prompt_lengths: Tensor, prompt_width: int, eos_id: int | Sequence[int]
) -> GeneratedBatch:
    """Cut a generation output into prompts and responses.

    Args:
        sequences: (B, W + R) int64 from `generate`: columns [0, W) hold the left-padded prompts,
            columns [W, W + R) the responses, each followed by padding once it emitted `eos_id`.
        prompt_lengths: (B,) number of real prompt tokens of each row (right-aligned at column W).
        prompt_width: W.

    A response runs up to and including its first `eos_id` (or any of them, when a model has
    several); a row without one is `truncated` and keeps all R tokens.
    """
    prompt_lengths = _check_generation(sequences, prompt_lengths, prompt_width)
    response_lengths, truncated = _generation_lengths(sequences, prompt_width, eos_id)
    rows = zip(sequences, prompt_lengths.tolist(), response_lengths.tolist(), strict=True)
    prompts, responses = [], []
    for row, prompt_length, response_length in rows:
        prompts.append(row[prompt_width - prompt_length : prompt_width])
        responses.append(row[prompt_width : prompt_width + response_length])
    return GeneratedBatch(prompts, responses, response_lengths, truncated)


def _generation_lengths(
    sequences: Tensor, prompt_width: int, eos_id: int | Sequence[int]
) -> tuple[Tensor, Tensor]:
    """`generation_lengths` for one eos id or several (the others are read as the first one)."""
    eos_ids = [eos_id] if isinstance(eos_id, int) else list(eos_id)
    if not eos_ids or any(isinstance(e, bool) or not isinstance(e, int) or e < 0 for e in eos_ids):
        raise ValueError(f"eos_id must be a non-negative int or a non-empty list of them, got {eos_id!r}")
    if len(eos_ids) > 1:
        others = torch.tensor(eos_ids[1:], device=sequences.device)
        sequences = torch.where(torch.isin(sequences, others), eos_ids[0], sequences)
    return _ops(sequences.device).generation_lengths(sequences, prompt_width, eos_ids[0])


def batch_from_generation(
    sequences: Tensor,
    prompt_lengths: Tensor,
    prompt_width: int,
    eos_id: int | Sequence[int],
    pad_id: int,
    layout: Literal["padded", "packed"] = "packed",
    pad_side: Literal["left", "right"] = "right",
) -> TrainingBatch:
    """`build_rollout_batch(*split_generation(...))` without leaving the device: see `split_generation`."""
    if layout not in ("padded", "packed"):
        raise ValueError(f"layout must be 'padded' or 'packed', got {layout!r}")
    left = _check_side(pad_side, "pad_side")
    if not isinstance(pad_id, int) or pad_id < 0:
        raise ValueError(f"pad_id must be a non-negative int, got {pad_id!r}")
    prompt_lengths = _check_generation(sequences, prompt_lengths, prompt_width)
    ops = _ops(sequences.device)
    response_lengths, truncated = _generation_lengths(sequences, prompt_width, eos_id)
    lengths = prompt_lengths + response_lengths
    # The padded width costs a device sync: only the padded layout needs it.
    max_len = int(lengths.max()) if layout == "padded" and lengths.numel() > 0 else 0
    outputs = ops.rollout_from_generation(
        sequences, prompt_lengths, response_lengths, prompt_width, pad_id, max_len, layout == "packed", left
    )
    cu_seqlens = torch.zeros(lengths.numel() + 1, dtype=torch.int32, device=sequences.device)
    torch.cumsum(lengths, 0, out=cu_seqlens[1:])
    return TrainingBatch(
        *outputs,
        cu_seqlens=cu_seqlens,
        prompt_lengths=prompt_lengths,
        response_lengths=response_lengths,
        truncated=truncated,
        layout=layout,
        pad_side=pad_side,
    )


def group_advantages(
    rewards: Tensor,
    group_size: int,
    scale: Literal["std", "none"] = "std",
    eps: float = 1e-6,
    *,
    valid: Tensor | None = None,
) -> Tensor:
    """GRPO advantages: rewards (B*G,) float, groups of `group_size` consecutive rewards ->
    (r - group mean) / (group sample std + eps) when `scale="std"`, r - group mean when "none";
    float32 (B*G,).

    `valid` (bool (B*G,), optional) marks the rewards that count: the group statistics are taken
    over them only and the others get 0 (their value is not read, so it may be NaN), so a group with
    a single valid reward gets 0 everywhere.
    """
    if not isinstance(rewards, Tensor) or not rewards.is_floating_point():
        raise TypeError("rewards must be a floating-point tensor (B*G,)")
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D (B*G,), got shape {tuple(rewards.shape)}")
    if not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size must be a positive int, got {group_size!r}")
    if rewards.numel() % group_size != 0:
        raise ValueError(f"group_size {group_size} does not divide the {rewards.numel()} rewards")
    if scale not in ("std", "none"):
        raise ValueError(f"scale must be 'std' or 'none', got {scale!r}")
    if not eps >= 0:
        raise ValueError(f"eps must be >= 0, got {eps!r}")
    if valid is not None:
        if not isinstance(valid, Tensor) or valid.dtype != torch.bool or valid.shape != rewards.shape:
            raise TypeError(f"valid must be a bool tensor of shape {tuple(rewards.shape)}")
        if valid.device != rewards.device:
            raise ValueError(f"valid is on {valid.device} but rewards is on {rewards.device}")
    counted = rewards if valid is None else rewards[valid]
    if counted.numel() > 0 and not bool(torch.isfinite(counted).all()):
        raise ValueError("rewards contains NaN or inf (mark ungradable rollouts invalid with `valid`)")
    return _ops(rewards.device).group_advantages(rewards, valid, group_size, scale == "std", float(eps))


def segment_advantages(
    token_segment_ids: Tensor,
    segment_scores: Tensor | Sequence[Tensor],
    mode: Literal["delta", "end", "group"] = "delta",
    *,
    num_segments: Tensor | None = None,
    cu_seqlens: Tensor | None = None,
    group_size: int | None = None,
    eps: float = 1e-6,
) -> Tensor:
    """Per-token advantages of ExpRL-Process from per-segment scores, float32 shaped like the ids.

    Args:
        token_segment_ids: (B, T) int64, or (N,) packed with `cu_seqlens`: the 0-based segment of
            each token of row b; -1 for tokens outside any scored segment (they get 0).
        segment_scores: (B, S) float with row b's scores s_1..s_T in its first T = `num_segments[b]`
            columns (default: all S), or a list of B 1-D float tensors (then `num_segments` is
            their lengths).
        mode: "delta" a_1 = s_1 - s_T, a_t = s_t - s_{t-1} (a lone segment: a_1 = s_1); "end"
            a_t = s_t - s_T (the last segment 0);
            "group" (s_t - mean) / (std + eps) over all scores of the row's group of `group_size`.
    """
    if mode not in SEGMENT_MODES:
        raise ValueError(f"mode must be one of {sorted(SEGMENT_MODES)}, got {mode!r}")
    if not isinstance(token_segment_ids, Tensor) or token_segment_ids.dtype != torch.long:
        raise TypeError("token_segment_ids must be an int64 tensor")
    device = token_segment_ids.device
    if not isinstance(segment_scores, Tensor):
        if num_segments is not None:
            raise ValueError("num_segments is taken from the list lengths when segment_scores is a list")
        for index, row in enumerate(segment_scores):
            if not isinstance(row, Tensor) or row.dim() != 1 or not row.is_floating_point():
                raise TypeError(f"segment_scores[{index}] must be a 1-D float tensor")
        num_segments = torch.tensor([row.numel() for row in segment_scores], dtype=torch.long, device=device)
        segment_scores = (
            torch.nn.utils.rnn.pad_sequence([row.float().to(device) for row in segment_scores], True)
            if segment_scores
            else torch.zeros(0, 0, device=device)
        )
    if not segment_scores.is_floating_point() or segment_scores.dim() != 2:
        raise TypeError(f"segment_scores must be a 2-D float tensor (B, S), got {segment_scores.dtype}")
    if segment_scores.device != device:
        raise ValueError(f"segment_scores is on {segment_scores.device} but token_segment_ids is on {device}")
    batch, width = segment_scores.shape
    if num_segments is None:
        num_segments = torch.full((batch,), width, dtype=torch.long, device=device)
    if not isinstance(num_segments, Tensor) or num_segments.shape != (batch,):
        raise ValueError(f"num_segments must be a tensor of shape ({batch},)")
    num_segments = num_segments.to(device=device, dtype=torch.long)
    if batch > 0 and bool(((num_segments < 0) | (num_segments > width)).any()):
        raise ValueError(f"num_segments must lie in [0, {width}] (the columns of segment_scores)")
    if token_segment_ids.dim() == 2:
        if cu_seqlens is not None:
            raise ValueError("cu_seqlens is only for packed (1-D) token_segment_ids")
        if token_segment_ids.shape[0] != batch:
            raise ValueError(
                f"token_segment_ids has {token_segment_ids.shape[0]} rows but segment_scores has {batch}"
            )
        flat_ids = token_segment_ids.reshape(-1)
        cu = torch.arange(batch + 1, device=device) * token_segment_ids.shape[1]
    elif token_segment_ids.dim() == 1:
        if cu_seqlens is None:
            raise ValueError("cu_seqlens is required for packed (1-D) token_segment_ids")
        cu = _check_cu_seqlens(cu_seqlens, token_segment_ids.numel(), device)
        if cu.numel() != batch + 1:
            raise ValueError(f"cu_seqlens has {cu.numel() - 1} sequences but segment_scores has {batch}")
        flat_ids = token_segment_ids
    else:
        raise ValueError(f"token_segment_ids must be (B, T) or (N,), got {tuple(token_segment_ids.shape)}")
    if flat_ids.numel() > 0:
        rows = torch.repeat_interleave(torch.arange(batch, device=device), cu[1:] - cu[:-1])
        if bool(((flat_ids < -1) | (flat_ids >= num_segments[rows])).any()):
            raise ValueError("token_segment_ids must be -1 or a segment index below the row's num_segments")
    if mode == "group":
        if not isinstance(group_size, int) or group_size < 1:
            raise ValueError(f"group_size must be a positive int for mode='group', got {group_size!r}")
        if batch % group_size != 0:
            raise ValueError(f"group_size {group_size} does not divide the {batch} rows")
    elif group_size is not None:
        raise ValueError("group_size is only used by mode='group'")
    out = _ops(device).segment_advantages(
        flat_ids, cu, segment_scores, num_segments, SEGMENT_MODES[mode], group_size or 1, float(eps)
    )
    return out.view(token_segment_ids.shape)


def unpack(
    values: Tensor,
    cu_seqlens: Tensor,
    *,
    pad_value: float = 0,
    side: Literal["left", "right"] = "right",
    max_len: int | None = None,
) -> Tensor:
    """Packed values (N, *rest) -> padded (B, L, *rest), L = `max_len` or the longest sequence."""
    left = _check_side(side, "side")
    if not isinstance(values, Tensor) or values.dim() < 1:
        raise ValueError("values must be a tensor of shape (N, *rest)")
    cu = _check_cu_seqlens(cu_seqlens, values.shape[0], values.device)
    longest = int((cu[1:] - cu[:-1]).max()) if cu.numel() > 1 else 0
    if max_len is None:
        max_len = longest
    elif not isinstance(max_len, int) or max_len < longest:
        raise ValueError(f"max_len must be an int >= the longest sequence ({longest}), got {max_len!r}")
    return _ops(values.device).unpack(values, cu, max_len, pad_value, left)


def repack(padded: Tensor, cu_seqlens: Tensor, *, side: Literal["left", "right"] = "right") -> Tensor:
    """Padded (B, L, *rest) -> packed (N, *rest): the inverse of `unpack`."""
    left = _check_side(side, "side")
    if not isinstance(padded, Tensor) or padded.dim() < 2:
        raise ValueError("padded must be a tensor of shape (B, L, *rest)")
    if not isinstance(cu_seqlens, Tensor) or cu_seqlens.dim() != 1:
        raise TypeError("cu_seqlens must be a 1-D int32 or int64 tensor")
    cu = _check_cu_seqlens(cu_seqlens, int(cu_seqlens[-1]) if cu_seqlens.numel() else 0, padded.device)
    if cu.numel() - 1 != padded.shape[0]:
        raise ValueError(f"cu_seqlens has {cu.numel() - 1} sequences but padded has {padded.shape[0]} rows")
    longest = int((cu[1:] - cu[:-1]).max()) if cu.numel() > 1 else 0
    if longest > padded.shape[1]:
        raise ValueError(f"cu_seqlens has a sequence of {longest} tokens but padded has L={padded.shape[1]}")
    return _ops(padded.device).repack(padded, cu, left)
