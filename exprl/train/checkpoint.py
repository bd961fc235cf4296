"""Checkpoints that a killed run can never leave half written.

Layout under `runs/<name>/checkpoints/`:
    step_000010/           a complete DeepSpeed checkpoint (model, optimizer, scheduler shards)
        trainer_state.json  data position, counters and run history (rank 0)
        rng_rank<r>.pt      python / numpy / torch RNG states of rank r
    latest                 the name of the newest complete checkpoint

A checkpoint is written under `tmp-step_000010`, renamed once every rank has finished, and only then is
`latest` replaced (write a temp file, `os.replace`). A kill at any point leaves `latest` naming a
complete checkpoint, or no `latest` at all.
"""

from __future__ import annotations

import json
import os
import pathlib
import random
import shutil
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from exprl.errors import RunError

LATEST = "latest"


def rng_state() -> dict[str, Any]:
    """This process's python / numpy / torch RNG states as tensors and plain numbers, which
    `torch.load(weights_only=True)` reads back without running any pickled code."""
    version, words, gauss = random.getstate()
    _, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    state = {
        "python": {"version": version, "words": torch.tensor(words, dtype=torch.int64), "gauss": gauss},
        "numpy": {
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` returned."""
    py, npy = state["python"], state["numpy"]
    random.setstate((py["version"], tuple(py["words"].tolist()), py["gauss"]))
    keys = npy["keys"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, npy["pos"], npy["has_gauss"], npy["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_rng_state(path: pathlib.Path) -> None:
    """Restore this rank's RNG from `path`. Loaded with `weights_only=True`: a file that holds anything
    but tensors and plain data is refused, never executed."""
    try:
        state = torch.load(path, weights_only=True)
    except Exception as error:  # torch raises UnpicklingError, RuntimeError, EOFError... for bad files
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise RunError(f"{path}: not an RNG state saved by exprl ({first_line})") from error
    set_rng_state(state)


def tag_for(step: int) -> str:
    return f"step_{step:06d}"


def save(engine: Any, ckpt_dir: pathlib.Path, step: int, trainer_state: dict[str, Any]) -> pathlib.Path:
    """Write a checkpoint of `engine` after `step` on every rank (collective); returns its directory."""
    rank = dist.get_rank()
    tag = tag_for(step)
    tmp_tag = "tmp-" + tag
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    if rank == 0 and (ckpt_dir / tmp_tag).exists():  # left over from a run killed while saving
        shutil.rmtree(ckpt_dir / tmp_tag)
    dist.barrier()
    engine.save_checkpoint(str(ckpt_dir), tag=tmp_tag, save_latest=False)
    torch.save(rng_state(), ckpt_dir / tmp_tag / f"rng_rank{rank}.pt")
    if rank == 0:
        (ckpt_dir / tmp_tag / "trainer_state.json").write_text(json.dumps(trainer_state))
    dist.barrier()
    if rank == 0:
        final = ckpt_dir / tag
        if final.exists():
            shutil.rmtree(final)
        os.replace(ckpt_dir / tmp_tag, final)
        pointer = ckpt_dir / (LATEST + ".tmp")
        pointer.write_text(tag)
        os.replace(pointer, ckpt_dir / LATEST)
    dist.barrier()
    return ckpt_dir / tag


def latest(ckpt_dir: pathlib.Path) -> str | None:
    """The tag `latest` names, or None when there is no complete checkpoint."""
    pointer = ckpt_dir / LATEST
    if not pointer.is_file():
        return None
    tag = pointer.read_text().strip()
    return tag if (ckpt_dir / tag / "trainer_state.json").is_file() else None


def load(engine: Any, ckpt_dir: pathlib.Path, tag: str) -> dict[str, Any]:
    """Restore `engine` (model, optimizer, scheduler) and this rank's RNG from `tag`; returns the trainer
    state saved with it."""
    path, _ = engine.load_checkpoint(
        str(ckpt_dir), tag=tag, load_optimizer_states=True, load_lr_scheduler_states=True
    )
    if path is None:
        raise RuntimeError(f"DeepSpeed could not load checkpoint {ckpt_dir / tag}")
    rank_file = ckpt_dir / tag / f"rng_rank{dist.get_rank()}.pt"
    if not rank_file.is_file():
        raise ValueError(
            f"{ckpt_dir / tag}: no RNG state for rank {dist.get_rank()}; was it saved with "
            "another world size?"
        )
    load_rng_state(rank_file)
    return json.loads((ckpt_dir / tag / "trainer_state.json").read_text())
