"""Advantage estimators, registered by name; the trainer looks one up from `algo.advantage`.

Every estimator has the same signature:

    estimator(scores, group_size, *, token_segment_ids, response_lengths, scale) -> list[Tensor]

* `scores`: one entry per rollout, prompt-major (the G rollouts of a prompt are consecutive):
  a float (response-level reward), a list of floats (one per segment) or None (dropped: the rollout
  could not be graded; it gets zero advantages and must be masked out of the loss by the caller).
* `token_segment_ids`: per rollout, int64 (R_i,), the 0-based segment of each response token; the
  trainer computes it only for estimators registered with `needs_segments=True`, else passes None.
* `truncated` (only for `needs_segments=True`): per rollout, whether it hit the length limit. Response-level
  scores of truncated rollouts arrive as 0 (`exprl.train.rollout.score`); per-segment scores arrive as
  the judge gave them, because the length-limit rule depends on the estimator: process-delta and
  process-group treat them as all 0 (every advantage 0 for delta), process-end gives -s_T on every
  token (the official EndNorm: the zeroed reward minus the judge's last-segment score), and
  process-delta-charge gives -1 on every token (DeltaNorm otherwise; exprl's, not in the published code).
* Returns per rollout a float32 (R_i,) tensor: the advantage of each response token.

GroupNorm (process-group) deviates from the official code on purpose: the official version subtracts the
group's mean of each rollout's token-averaged segment score and divides by nothing; here every segment
score of the group counts once in the mean and the std divides (`batching.segment_advantages`).

Adding a variant is adding a function with `@register("name")` (`needs_groups=True` when it normalises
within a prompt's group of samples, `needs_segments=True` when it reads
per-segment scores): config validation and the trainer ask `ADVANTAGES`, there is no other list.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from exprl import batching

Score = float | list[float] | None


@dataclass(frozen=True)
class Estimator:
    """A registered estimator: the function, and what the trainer must know to call it."""

    name: str
    fn: Callable[..., list[Tensor]]
    # reads per-segment scores and token_segment_ids: needs a judge in process mode (reward.mode: process)
    # (and `truncated`, with the judge's own scores of truncated rollouts: the estimator applies the
    # length-limit rule itself)
    needs_segments: bool = False
    # normalises within a prompt's group of samples: with one sample per prompt every advantage is 0
    needs_groups: bool = False

    def __call__(self, *args, **kwargs) -> list[Tensor]:
        return self.fn(*args, **kwargs)


ADVANTAGES: dict[str, Estimator] = {}


def register(
    name: str, *, needs_segments: bool = False, needs_groups: bool = False
) -> Callable[[Callable], Callable]:
    """Decorator: add `fn` to `ADVANTAGES` as `name`; a name registered twice is a ValueError."""

    def add(fn: Callable[..., list[Tensor]]) -> Callable[..., list[Tensor]]:
        if name in ADVANTAGES:
            raise ValueError(
                f"advantage estimator {name!r} is already registered "
                f"({ADVANTAGES[name].fn.__module__}.{ADVANTAGES[name].fn.__qualname__})"
            )
        ADVANTAGES[name] = Estimator(name, fn, needs_segments, needs_groups)
        return fn

    return add


def get(name: str) -> Estimator:
    if name not in ADVANTAGES:
        raise ValueError(
            f"advantage: unknown estimator {name!r}; registered: {', '.join(sorted(ADVANTAGES))}"
        )
    return ADVANTAGES[name]


@register("grpo", needs_groups=True)
def grpo(
    scores: Sequence[Score],
    group_size: int,
    *,
    response_lengths: Sequence[int],
    scale: str = "std",
    token_segment_ids: Sequence[Tensor] | None = None,
) -> list[Tensor]:
    """GRPO: `(r - mean_group) / (std_group + 1e-6)` (or `r - mean_group` with scale="none") on every
    token of the rollout. Dropped rollouts are left out of their group's statistics."""
    del token_segment_ids
    _check_lengths(scores, response_lengths, group_size)
    if any(s is not None and not isinstance(s, int | float) for s in scores):
        raise TypeError("grpo needs one float score per rollout; got per-segment scores (use process-*)")
    rewards = torch.tensor([0.0 if s is None else float(s) for s in scores], dtype=torch.float32)
    valid = torch.tensor([s is not None for s in scores], dtype=torch.bool)
    # a group with one graded rollout has no baseline: the op gives it 0, like the dropped ones
    sequence_adv = batching.group_advantages(rewards, group_size, scale=scale, valid=valid)
    return [torch.full((n,), float(a)) for a, n in zip(sequence_adv.tolist(), response_lengths, strict=True)]


def _process(
    mode: str, truncation_charge: Callable[[list[float]], float] | None = None
) -> Callable[..., list[Tensor]]:
    """The estimator of `segment_advantages(mode=mode)`; `truncation_charge(scores)`, when given, is the
    advantage of every token of a truncated rollout with the judge's segment `scores`."""

    def estimator(
        scores: Sequence[Score],
        group_size: int,
        *,
        response_lengths: Sequence[int],
        token_segment_ids: Sequence[Tensor],
        truncated: Sequence[bool] | None = None,
        scale: str = "std",
    ) -> list[Tensor]:
        del scale
        _check_lengths(scores, response_lengths, group_size)
        if len(token_segment_ids) != len(scores):
            raise ValueError(f"token_segment_ids has {len(token_segment_ids)} rows for {len(scores)} scores")
        truncated = [False] * len(scores) if truncated is None else list(truncated)
        if len(truncated) != len(scores):
            raise ValueError(f"truncated has {len(truncated)} entries for {len(scores)} scores")
        width = max(response_lengths, default=0)
        ids = torch.full((len(scores), width), -1, dtype=torch.long)
        rows = []
        for i, (score, seg, n) in enumerate(zip(scores, token_segment_ids, response_lengths, strict=True)):
            if seg.shape != (n,):
                raise ValueError(f"token_segment_ids[{i}] has shape {tuple(seg.shape)}, expected ({n},)")
            if score is None:  # dropped: no scored segments, its tokens stay at -1 (advantage 0)
                rows.append(torch.zeros(0))
                continue
            if not isinstance(score, list | tuple):
                raise TypeError(
                    f"{mode}: rollout {i} has a response-level score; process needs one per segment"
                )
            if n and int(seg.max()) >= len(score):
                raise ValueError(
                    f"rollout {i}: tokens reach segment {int(seg.max())} but it has {len(score)} scores"
                )
            ids[i, :n] = seg
            rows.append(torch.tensor([0.0] * len(score) if truncated[i] else score, dtype=torch.float32))
        per_token = batching.segment_advantages(
            ids, rows, mode=mode, group_size=group_size if mode == "group" else None
        )
        out = [per_token[i, :n].clone() for i, n in enumerate(response_lengths)]
        if truncation_charge is not None:
            for i, score in enumerate(scores):
                if truncated[i] and score:
                    out[i].fill_(truncation_charge(score))
        return out

    estimator.__name__ = f"process_{mode}"
    estimator.__doc__ = (
        f"ExpRL-Process, `exprl.batching.segment_advantages(mode={mode!r})` per token; truncated rollouts "
        "as the module docstring says."
    )
    return estimator


register("process-delta", needs_segments=True)(_process("delta"))
register("process-end", needs_segments=True)(_process("end", lambda score: -float(score[-1])))
register("process-group", needs_segments=True, needs_groups=True)(_process("group"))
# Not in the published code: DeltaNorm whose truncated rollouts get -1 on every token (the largest drop a
# segment delta can take, scores being in [0, 1]). Under the published rule (all 0) never finishing costs
# nothing while a wrong answer's delta is negative, and at a short length limit the policy learns never to
# answer; EndNorm's -s_T is no remedy there, since the segment cut by the limit scores about 0
# (benchmarks/results/experiment-tiny/NOTES.md).
process_delta_charge = _process("delta", lambda score: -1.0)
process_delta_charge.__name__ = "process_delta_charge"
register("process-delta-charge", needs_segments=True)(process_delta_charge)


def _check_lengths(scores: Sequence[Score], response_lengths: Sequence[int], group_size: int) -> None:
    if len(scores) != len(response_lengths):
        raise ValueError(f"{len(scores)} scores but {len(response_lengths)} response lengths")
    if group_size < 1 or len(scores) % group_size:
        raise ValueError(f"group_size {group_size} does not divide the {len(scores)} rollouts")
