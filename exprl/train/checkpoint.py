"""Checkpoints that a killed run can never leave half written.

Layout under `runs/<name>/checkpoints/`:
    step_000010/           a complete DeepSpeed checkpoint (model, optimizer, scheduler shards)
        trainer_state.json  data position, counters and run history (rank 0)
        rng_rank<r>.pt      python / numpy / torch RNG states of rank r
        manifest.json       size and sha256 of every other file, written last
    latest                 the name of the newest complete checkpoint (for people; resume checks files)

A checkpoint is written under `tmp-step_000010`, renamed once every rank has finished, and only then is
`latest` replaced (write a temp file, `os.replace`). A kill at any point leaves only complete checkpoints
under their final names. Resume takes the newest one whose files match its manifest
(`newest_intact`), so a deleted or damaged checkpoint costs the steps since the one before, not the run.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import random
import re
import shutil
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from exprl.errors import RunError

LATEST = "latest"
MANIFEST = "manifest.json"
TAG = re.compile(r"step_(\d{6,})")


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
        write_manifest(ckpt_dir / tmp_tag)
        final = ckpt_dir / tag
        if final.exists():
            shutil.rmtree(final)
        os.replace(ckpt_dir / tmp_tag, final)
        pointer = ckpt_dir / (LATEST + ".tmp")
        pointer.write_text(tag)
        os.replace(pointer, ckpt_dir / LATEST)
    dist.barrier()
    return ckpt_dir / tag


def _sha256(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(directory: pathlib.Path) -> None:
    """Record the size and sha256 of every file under `directory` in its manifest.json."""
    files = sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST)
    entries = {
        str(p.relative_to(directory)): {"bytes": p.stat().st_size, "sha256": _sha256(p)} for p in files
    }
    (directory / MANIFEST).write_text(json.dumps(entries, indent=1))


def damage(directory: pathlib.Path) -> str | None:
    """Why the checkpoint in `directory` cannot be resumed from (a file missing, truncated or changed
    since it was written, naming the file), or None when it is intact."""
    manifest = directory / MANIFEST
    if not manifest.is_file():
        return f"{manifest} is missing"
    try:
        entries = json.loads(manifest.read_text())
    except ValueError:
        return f"{manifest} is not valid JSON"
    for name, entry in entries.items():
        path = directory / name
        if not path.is_file():
            return f"{path} is missing"
        if path.stat().st_size != entry["bytes"]:
            return f"{path} holds {path.stat().st_size} bytes, {entry['bytes']} were written"
        if _sha256(path) != entry["sha256"]:
            return f"{path} differs from what was written (sha256)"
    return None


def tags(ckpt_dir: pathlib.Path) -> list[str]:
    """The checkpoints under `ckpt_dir` (final names only, never `tmp-`), newest step first."""
    if not ckpt_dir.is_dir():
        return []
    found = [
        (int(m.group(1)), p.name) for p in ckpt_dir.iterdir() if (m := TAG.fullmatch(p.name)) and p.is_dir()
    ]
    return [name for _, name in sorted(found, reverse=True)]


def newest_intact(ckpt_dir: pathlib.Path) -> tuple[str | None, list[str]]:
    """(the newest checkpoint whose files match its manifest or None, why each newer one was passed over)."""
    passed_over = []
    pointer = ckpt_dir / LATEST
    named = pointer.read_text().strip() if pointer.is_file() else None
    if named and not (ckpt_dir / named).is_dir():
        passed_over.append(f"{named}: {ckpt_dir / named} is missing (named by {pointer})")
    for tag in tags(ckpt_dir):
        why = damage(ckpt_dir / tag)
        if why is None:
            return tag, passed_over
        passed_over.append(f"{tag}: {why}")
    return None, passed_over


def trainer_state(ckpt_dir: pathlib.Path, tag: str) -> dict[str, Any]:
    """The trainer state saved with checkpoint `tag` (data position, counters, the config it ran with)."""
    return json.loads((ckpt_dir / tag / "trainer_state.json").read_text())


def load(engine: Any, ckpt_dir: pathlib.Path, tag: str, load_scheduler: bool = True) -> dict[str, Any]:
    """Restore `engine` (model, optimizer and, with `load_scheduler`, the lr schedule's position) and this
    rank's RNG from `tag`; returns the trainer state saved with it."""
    path, _ = engine.load_checkpoint(
        str(ckpt_dir), tag=tag, load_optimizer_states=True, load_lr_scheduler_states=load_scheduler
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
    return trainer_state(ckpt_dir, tag)
