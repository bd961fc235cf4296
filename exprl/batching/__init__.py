"""Rollout batching: ragged token lists <-> model-ready tensors, and group / segment advantages.

The API lives in `exprl.batching.api` (argument checks, backend choice), the spec of every op in
`exprl.batching.reference` (plain PyTorch), the compiled ops in `csrc/` (`torch.ops.exprl.*`).
The trainer reaches it through `build_rollout_batch`, `group_advantages` and `segment_advantages`,
the sampler (`exprl.models.generation`) through `pad_sequences` and `split_generation`.
"""

from exprl.batching.api import (
    GeneratedBatch,
    TrainingBatch,
    backend,
    batch_from_generation,
    build_rollout_batch,
    extension_error,
    group_advantages,
    pack_sequences,
    pad_sequences,
    repack,
    segment_advantages,
    split_generation,
    unpack,
    use_backend,
)
from exprl.batching.reference import IGNORE_INDEX, SEGMENT_MODES

__all__ = [
    "IGNORE_INDEX",
    "SEGMENT_MODES",
    "GeneratedBatch",
    "TrainingBatch",
    "backend",
    "batch_from_generation",
    "build_rollout_batch",
    "extension_error",
    "group_advantages",
    "pack_sequences",
    "pad_sequences",
    "repack",
    "segment_advantages",
    "split_generation",
    "unpack",
    "use_backend",
]
