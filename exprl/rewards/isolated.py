"""Rewards that run code which may never return (a user's function, symbolic math) in a worker process, so
that a call past its time limit is killed and its rollout dropped instead of hanging the run.

The worker (`python -m exprl.rewards.isolated`) builds the same reward class with the same options (it
imports that class's module only) and scores one rollout per request. Requests and replies are pickles,
each preceded by its length, on the worker's stdin and on a private copy of its stdout (what the user's
code prints goes to stderr).
"""

from __future__ import annotations

import importlib
import os
import pathlib
import pickle
import select
import struct
import subprocess
import sys
import traceback
import weakref
from collections.abc import Sequence
from typing import Any, BinaryIO

from exprl.data import SEGMENT_DELIMITER
from exprl.rewards.base import Rollout, Score

STARTUP_TIMEOUT_S = 120.0  # importing the user's file and building the reward, not a scoring call
_HEADER = struct.Struct("<Q")
# exceptions of the reward that keep their type across the process boundary; others become RuntimeError
_RAISED_AS = {e.__name__: e for e in (ValueError, TypeError, FileNotFoundError, RuntimeError)}


def _send(stream: BinaryIO, message: Any) -> None:
    data = pickle.dumps(message)
    stream.write(_HEADER.pack(len(data)) + data)
    stream.flush()


def _read_exactly(fd: int, n: int) -> bytes | None:
    chunks, left = [], n
    while left:
        chunk = os.read(fd, left)
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _receive(fd: int) -> Any:
    """The next message on `fd`, or EOFError when the other side has gone."""
    header = _read_exactly(fd, _HEADER.size)
    data = None if header is None else _read_exactly(fd, _HEADER.unpack(header)[0])
    if data is None:
        raise EOFError
    return pickle.loads(data)


def _describe(error: BaseException) -> str:
    """The error's message, with the traceback of what caused it (the user's code) when it has a cause."""
    cause = error.__cause__
    return str(error) + ("\n" + "".join(traceback.format_exception(cause)) if cause is not None else "")


class IsolatedReward:
    """The reward `build_reward(name, **options)`, each rollout scored in a worker process within
    `timeout_s` seconds.

    A rollout whose call times out scores None (the trainer drops it) and counts in counters["timeout"];
    the worker is killed and a fresh one serves the next rollout. The reward's own counters come back from
    the worker. An exception raised by the reward is raised here, with its message and type (ValueError,
    TypeError, FileNotFoundError; RuntimeError otherwise); so is a worker that dies.
    `first_failure` describes the first rollout it could not score.
    """

    def __init__(self, name: str, options: dict[str, Any], timeout_s: float) -> None:
        from exprl.rewards.registry import reward_class

        if not isinstance(timeout_s, int | float) or isinstance(timeout_s, bool) or timeout_s <= 0:
            raise ValueError(f"timeout_s must be a positive number of seconds, got {timeout_s!r}")
        cls = reward_class(name)
        self.name, self.granularity = cls.name, cls.granularity
        self.delimiter = options.get("delimiter", SEGMENT_DELIMITER)
        self.timeout_s = float(timeout_s)
        self.counters: dict[str, int] = {"timeout": 0}
        self.first_failure: str | None = None
        self._spec = (cls.__module__, cls.__qualname__, dict(options))  # the worker imports only that
        self._worker: subprocess.Popen | None = None
        self._start()

    def _start(self) -> None:
        package_root = str(pathlib.Path(__file__).resolve().parents[2])
        env = dict(
            os.environ, PYTHONPATH=os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))
        )
        self._worker = subprocess.Popen(
            [sys.executable, "-m", "exprl.rewards.isolated"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )
        weakref.finalize(self, self._worker.kill)
        _send(self._worker.stdin, self._spec)
        reply = self._reply(STARTUP_TIMEOUT_S, f"starting reward {self.name!r}")
        if reply is None:
            raise RuntimeError(
                f"reward {self.name!r}: its worker did not start within {STARTUP_TIMEOUT_S:g} s"
            )

    def _reply(self, timeout_s: float, doing: str) -> Any:
        """The worker's reply within `timeout_s` seconds (None when it takes longer), raising what the
        reward raised."""
        fd = self._worker.stdout.fileno()
        ready, _, _ = select.select([fd], [], [], timeout_s)
        if not ready:
            return None
        try:
            kind, *payload = _receive(fd)
        except EOFError:
            status = self._worker.wait()
            self._worker = None
            raise RuntimeError(f"{doing}: the reward's worker process exited with status {status}") from None
        if kind == "error":
            error_type, message = payload
            raise _RAISED_AS.get(error_type, RuntimeError)(message)
        return payload

    def _kill(self) -> None:
        self._worker.kill()
        self._worker.wait()
        self._worker = None

    def score(self, batch: Sequence[Rollout]) -> list[Score]:
        scores: list[Score] = []
        for rollout in batch:
            if self._worker is None:
                self._start()
            _send(self._worker.stdin, rollout)
            reply = self._reply(self.timeout_s, f"scoring problem {rollout.problem.id!r}")
            if reply is None:
                self._kill()
                self.counters["timeout"] += 1
                self.first_failure = self.first_failure or (
                    f"reward {self.name!r} did not return within reward.timeout_s={self.timeout_s:g} s "
                    f"on problem {rollout.problem.id!r}"
                )
                scores.append(None)
                continue
            value, counted, failure = reply
            for key, n in counted.items():
                self.counters[key] = self.counters.get(key, 0) + n
            self.first_failure = self.first_failure or failure
            scores.append(value)
        return scores


def serve() -> None:
    """The worker's loop: build the reward class named on stdin, then score one rollout per request."""
    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # the user's prints must not reach the reply stream
    requests = sys.stdin.buffer.fileno()
    module, qualname, options = _receive(requests)
    try:
        reward = getattr(importlib.import_module(module), qualname)(**options)
    except Exception as error:
        _send(replies, ("error", type(error).__name__, _describe(error)))
        return
    _send(replies, ("ready",))
    while True:
        try:
            rollout = _receive(requests)
        except EOFError:
            return
        before = dict(reward.counters)
        try:
            (value,) = reward.score([rollout])
        except Exception as error:
            _send(replies, ("error", type(error).__name__, _describe(error)))
            continue
        counted = {k: n - before.get(k, 0) for k, n in reward.counters.items() if n != before.get(k, 0)}
        failure = getattr(reward, "first_failure", None) if value is None else None
        _send(replies, ("ok", value, counted, failure))


if __name__ == "__main__":
    serve()
