"""The order in which a run consumes its training problems."""

from __future__ import annotations


def step_prompts(n_problems: int, prompts_per_step: int, step: int, seed: int, shuffle: bool) -> list[int]:
    """Indices into the training problems for `step`: a seeded permutation per epoch, consumed in order
    (the data position is just the step, so a resumed run continues exactly)."""
    import torch  # here, not at import: a reward worker reads Problems without paying for torch

    out = []
    for position in range(step * prompts_per_step, (step + 1) * prompts_per_step):
        epoch, offset = divmod(position, n_problems)
        if shuffle:
            order = torch.randperm(
                n_problems, generator=torch.Generator().manual_seed(seed * 100_003 + epoch)
            )
            out.append(int(order[offset]))
        else:
            out.append(offset)
    return out
