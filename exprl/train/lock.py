"""One run per run directory: an exclusive `fcntl` lock on `runs/<name>/.lock` for the run's lifetime.

The kernel drops the lock when its file is closed or the process ends, however it ends (`kill -9`
included), so a crashed run never leaves a stale lock behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pathlib
import socket
from collections.abc import Iterator

import torch.distributed as dist

from exprl.errors import RunError

LOCK_FILE = ".lock"


@contextlib.contextmanager
def hold_run_lock(run_dir: pathlib.Path) -> Iterator[None]:
    """Hold the lock of `run_dir` (created if missing) for the body. Rank 0 takes it; when another process
    holds it, every rank raises RunError at once, naming the directory and the holder."""
    rank = dist.get_rank() if dist.is_initialized() else 0
    handle, error = None, None
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        handle = (run_dir / LOCK_FILE).open("a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            handle = None
            error = (
                f"{run_dir} is in use by another run ({holder}); wait for it to finish or give this run "
                "another name="
            )
        else:
            handle.seek(0)
            handle.truncate()
            handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
            handle.flush()
    errors = [error]
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.broadcast_object_list(errors, src=0)
    if errors[0] is not None:
        raise RunError(errors[0])
    try:
        yield
    finally:
        if handle is not None:
            handle.close()
