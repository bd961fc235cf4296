"""An on-disk cache of judge completions keyed by a hash of the request, so a resumed run never pays
twice for the same grade."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path


def request_key(request: dict) -> str:
    """sha256 of the request as canonical JSON (sorted keys): equal requests, equal keys."""
    return hashlib.sha256(json.dumps(request, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


class CompletionCache:
    """One small JSON file per request under `directory` (sharded by the key's first two hex digits).
    Writes are atomic (temp file + rename), so concurrent writers and a killed run leave no torn entry."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}.json"

    def get(self, request: dict) -> str | None:
        path = self._path(request_key(request))
        try:
            return json.loads(path.read_text())["completion"]
        except (FileNotFoundError, json.JSONDecodeError, KeyError):
            return None

    def put(self, request: dict, completion: str) -> None:
        path = self._path(request_key(request))
        path.parent.mkdir(exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "w") as handle:
            json.dump({"request": request, "completion": completion}, handle)
        os.replace(tmp, path)
