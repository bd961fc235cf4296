"""User errors, and how every command line reports them: one line on stderr and exit status 2."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable


class RunError(RuntimeError):
    """A run cannot go on for a reason the user can act on: its directory is locked by another run, no
    checkpoint of it is intact, the judge grades nothing."""


# What a user fixes by changing the command, the config, the data or the run directory; anything else
# is a bug of ours and keeps its traceback.
USER_ERRORS = (ValueError, FileNotFoundError, RunError)


def run_command(prog: str, function: Callable[[list[str]], int | None], argv: list[str]) -> int:
    """`function(argv)` as a command line: a user error prints `prog: message` on stderr (only rank 0
    under the distributed launcher) and returns 2. `--debug` anywhere in argv lets it raise with its
    traceback instead."""
    debug = "--debug" in argv
    try:
        return int(function([a for a in argv if a != "--debug"]) or 0)
    except USER_ERRORS as error:
        if debug:
            raise
        if os.environ.get("RANK", "0") == "0":
            print(f"{prog}: {error}", file=sys.stderr, flush=True)
        return 2
