"""Pure-PyTorch rollout batching: the spec the `exprl._C` ops must match, and the fallback when the
extension is not built.

Every function here has the same signature and outputs as the op of the same name in
`torch.ops.exprl` (see `csrc/batching.cpp`). Inputs are already validated by `exprl.batching`;
ragged data travels as a flat tensor plus `cu_seqlens` (B+1 offsets, int32 or int64).

Layout conventions:
* packed: sequences concatenated, `position_ids` restart at 0 for each sequence;
* padded: (B, L), each row's tokens contiguous, padding on the right (`left=False`) or left;
  padding has `attention_mask` 0, `position_ids` 0, `response_mask` False, `target_ids` -100.
"""

import torch
from torch import Tensor

from exprl.kernels.reference import IGNORE_INDEX

SEGMENT_MODES = {"delta": 0, "end": 1, "group": 2}


def _token_rows(cu_seqlens: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Row index and position inside its row of every token of a packed batch, and the row lengths."""
    cu = cu_seqlens.long()
    lengths = cu[1:] - cu[:-1]
    total = int(cu[-1]) if cu.numel() > 0 else 0
    row_index = torch.arange(lengths.numel(), device=cu.device)
    rows = torch.repeat_interleave(row_index, lengths, output_size=total)
    positions = torch.arange(total, device=cu.device) - cu[:-1][rows]
    return rows, positions, lengths


def _padded_source(cu_seqlens: Tensor, max_len: int, left: bool) -> tuple[Tensor, Tensor]:
    """For each slot of the (B, max_len) layout: the packed index it shows and whether it is a token."""
    cu = cu_seqlens.long()
    lengths = cu[1:] - cu[:-1]
    offsets = torch.arange(max_len, device=cu.device)[None, :]
    if left:
        offsets = offsets - (max_len - lengths)[:, None]
    is_token = (offsets >= 0) & (offsets < lengths[:, None])
    return torch.where(is_token, cu[:-1, None] + offsets, 0), is_token


def _gather_padded(values: Tensor, source: Tensor, is_token: Tensor, pad_value: float) -> Tensor:
    if values.shape[0] == 0:
        return values.new_full((*source.shape, *values.shape[1:]), pad_value)
    is_token = is_token.view(*is_token.shape, *([1] * (values.dim() - 1)))
    return torch.where(
        is_token, values[source], torch.tensor(pad_value, dtype=values.dtype, device=values.device)
    )


def unpack(values: Tensor, cu_seqlens: Tensor, max_len: int, pad_value: float, left: bool) -> Tensor:
    """values (N, *rest) packed -> (B, max_len, *rest), `pad_value` where a row has no token."""
    return _gather_padded(values, *_padded_source(cu_seqlens, max_len, left), pad_value)


def repack(padded: Tensor, cu_seqlens: Tensor, left: bool) -> Tensor:
    """padded (B, L, *rest) -> (N, *rest): the inverse of `unpack` (padding dropped)."""
    rows, positions, lengths = _token_rows(cu_seqlens)
    columns = positions + (padded.shape[1] - lengths[rows]) if left else positions
    return padded[rows, columns]


def rollout_batch(
    prompt_ids: Tensor,
    prompt_cu: Tensor,
    response_ids: Tensor,
    response_cu: Tensor,
    pad_id: int,
    max_len: int,
    packed: bool,
    left: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Training tensors of the sequences `prompt_i + response_i`.

    Args:
        prompt_ids, response_ids: (Np,), (Nr,) int64, the prompts / responses concatenated.
        prompt_cu, response_cu: (B+1,) offsets of each prompt / response in them.
        max_len: L of the padded layout (>= longest sequence); ignored when `packed`.

    Returns:
        input_ids, attention_mask (int64), position_ids, response_mask (bool), target_ids, each
        (N,) when `packed` else (B, L). `target_ids[t]` is token t+1 of the same sequence when that
        token belongs to the response, else -100; `response_mask` is `target_ids != -100`.
    """
    device = prompt_ids.device
    prompt_lengths = (prompt_cu[1:] - prompt_cu[:-1]).long()
    lengths = prompt_lengths + (response_cu[1:] - response_cu[:-1]).long()
    cu = torch.zeros(lengths.numel() + 1, dtype=torch.long, device=device)
    torch.cumsum(lengths, 0, out=cu[1:])
    rows, positions, _ = _token_rows(cu)
    total = positions.numel()

    is_response = positions >= prompt_lengths[rows]
    input_ids = torch.empty(total, dtype=torch.long, device=device)
    # In packed order the prompt tokens (and the response tokens) keep their order in the flat inputs.
    input_ids[~is_response] = prompt_ids
    input_ids[is_response] = response_ids

    response_mask = torch.zeros(total, dtype=torch.bool, device=device)
    response_mask[:-1] = is_response[1:] & (rows[1:] == rows[:-1])
    target_ids = torch.full((total,), IGNORE_INDEX, dtype=torch.long, device=device)
    target_ids[:-1] = torch.where(response_mask[:-1], input_ids[1:], IGNORE_INDEX)
    attention_mask = torch.ones(total, dtype=torch.long, device=device)
    if packed:
        return input_ids, attention_mask, positions, response_mask, target_ids
    source, is_token = _padded_source(cu, max_len, left)
    return (
        _gather_padded(input_ids, source, is_token, pad_id),
        is_token.long(),
        _gather_padded(positions, source, is_token, 0),
        _gather_padded(response_mask, source, is_token, False),
        _gather_padded(target_ids, source, is_token, IGNORE_INDEX),
    )


def generation_lengths(sequences: Tensor, prompt_width: int, eos_id: int) -> tuple[Tensor, Tensor]:
    """Response lengths and truncation flags of a generation output.

    Args:
        sequences: (B, W + R) int64, columns [0, W) the left-padded prompts, [W, W+R) the responses.

    Returns:
        response_lengths (B,) int64: up to and including the first `eos_id`, or R when there is none;
        truncated (B,) bool: no `eos_id` among the R response columns.
    """
    responses = sequences[:, prompt_width:]
    if responses.shape[1] == 0:
        zeros = torch.zeros(sequences.shape[0], dtype=torch.long, device=sequences.device)
        return zeros, torch.ones_like(zeros, dtype=torch.bool)
    is_eos = responses == eos_id
    stopped = is_eos.any(dim=1)
    first_eos = is_eos.int().argmax(dim=1).long()
    lengths = torch.where(stopped, first_eos + 1, responses.shape[1])
    return lengths, ~stopped


def rollout_from_generation(
    sequences: Tensor,
    prompt_lengths: Tensor,
    response_lengths: Tensor,
    prompt_width: int,
    pad_id: int,
    max_len: int,
    packed: bool,
    left: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """`rollout_batch` of the sequences in a generation output.

    Row b's prompt is `sequences[b, W - prompt_lengths[b] : W]` and its response
    `sequences[b, W : W + response_lengths[b]]` (W = `prompt_width`).
    """
    batch, width = sequences.shape
    device = sequences.device
    prompt_columns = torch.arange(prompt_width, device=device)
    in_prompt = prompt_columns >= (prompt_width - prompt_lengths)[:, None]
    response_columns = torch.arange(width - prompt_width, device=device)
    in_response = response_columns < response_lengths[:, None]
    zero = torch.zeros(1, dtype=torch.long, device=device)
    return rollout_batch(
        sequences[:, :prompt_width][in_prompt],
        torch.cat([zero, prompt_lengths.cumsum(0)]),
        sequences[:, prompt_width:][in_response],
        torch.cat([zero, response_lengths.cumsum(0)]),
        pad_id,
        max_len,
        packed,
        left,
    )


def group_advantages(
    rewards: Tensor, valid: Tensor | None, group_size: int, scale: bool, eps: float
) -> Tensor:
    """(rewards - group mean) / (group std + eps) (or without the division), float32 (B*G,).

    Groups are consecutive runs of `group_size` rewards. `valid` (bool, like `rewards`, or None for
    all) marks the rewards that count: the mean and the sample std (n - 1, 0 for a single reward) are
    taken over them, and the others get 0.
    """
    grouped = rewards.float().view(-1, group_size)
    if grouped.numel() == 0:
        return grouped.reshape(-1)
    keep = torch.ones_like(grouped, dtype=torch.bool) if valid is None else valid.view(-1, group_size)
    counts = keep.sum(dim=1, keepdim=True)
    values = torch.where(keep, grouped, 0.0)
    mean = values.sum(dim=1, keepdim=True) / counts.clamp(min=1)
    centred = torch.where(keep, grouped - mean, 0.0)
    if scale:
        squares = (centred**2).sum(dim=1, keepdim=True)
        std = torch.where(counts > 1, (squares / (counts - 1).clamp(min=1)).sqrt(), 0.0)
        centred = centred / (std + eps)
    return centred.reshape(-1)


def segment_advantages(
    segment_ids: Tensor,
    cu_seqlens: Tensor,
    scores: Tensor,
    num_segments: Tensor,
    mode: int,
    group_size: int,
    eps: float,
) -> Tensor:
    """Per-token advantages from per-segment scores, float32 shaped like `segment_ids`.

    Args:
        segment_ids: (N,) int64, the 0-based segment of each token of row b (tokens
            cu_seqlens[b]:cu_seqlens[b+1]); -1 = not in any scored segment (advantage 0).
        scores: (B, S) float, row b's segment scores s_1..s_T in its first T = num_segments[b] columns.
        mode: 0 delta (a_1 = s_1 - s_T, a_t = s_t - s_{t-1}; a_1 = s_1 when T = 1), 1 end
            (a_t = s_t - s_T, so a_T = 0),
            2 group ((s_t - mean) / (std + eps) over every valid score of the row's group of
            `group_size` consecutive rows; sample std, 0 for a single score).
    """
    scores = scores.float()
    batch, width = scores.shape
    if width == 0:
        return torch.zeros(segment_ids.shape, dtype=torch.float32, device=segment_ids.device)
    columns = torch.arange(width, device=scores.device)
    valid = columns < num_segments[:, None]
    last = scores.gather(1, (num_segments - 1).clamp(min=0)[:, None])
    if mode == SEGMENT_MODES["delta"]:
        first_baseline = torch.where(num_segments[:, None] > 1, last, 0.0)
        previous = torch.cat([first_baseline, scores[:, :-1]], dim=1)
        table = scores - previous
    elif mode == SEGMENT_MODES["end"]:
        table = scores - last
    else:
        grouped = torch.where(valid, scores, 0.0).view(-1, group_size * width)
        counts = valid.view(-1, group_size * width).sum(dim=1, keepdim=True)
        mean = grouped.sum(dim=1, keepdim=True) / counts.clamp(min=1)
        squares = torch.where(valid.view_as(grouped), (grouped - mean) ** 2, 0.0).sum(dim=1, keepdim=True)
        std = torch.where(counts > 1, (squares / (counts - 1).clamp(min=1)).sqrt(), 0.0)
        table = ((grouped - mean) / (std + eps)).view(batch, width)
    table = torch.where(valid, table, 0.0)
    rows, _, _ = _token_rows(cu_seqlens)
    return torch.where(segment_ids >= 0, table[rows, segment_ids.clamp(min=0)], 0.0)
