"""Problems from a source string: "builtin:<family|all>:<level>:<split>:<n>[:<seed>]" or a JSONL/Parquet file.

Files hold one record per line (JSONL) or row (Parquet) with fields ``problem`` and ``answer`` and an
optional ``reference`` (steps joined by "###", last segment "Answer: ..."); optional ``id``, ``level`` and
``split`` are kept when present. The ``problem`` text is the policy's prompt, verbatim.
"""

import json
from pathlib import Path
from typing import Any

from exprl.data.problem import Problem, parse_reference_steps
from exprl.data.tasks import FAMILIES, SPLITS, builtin_problems


def load_problems(source: str, *, seed: int = 0) -> list[Problem]:
    """Load problems from ``source`` (see the module docstring); ``seed`` applies to "builtin:" specs
    that do not name one. Raises ValueError naming the spec, or the file and line/row of a bad record."""
    if not isinstance(source, str | Path):
        raise TypeError(f"source must be a str or Path, got {type(source).__name__}")
    source = str(source)
    if source.startswith("builtin:"):
        return _load_builtin(source, seed)
    path = Path(source)
    if path.suffix not in (".jsonl", ".parquet"):
        raise ValueError(f"source {source!r}: expected 'builtin:...', a .jsonl or a .parquet file")
    if not path.is_file():
        raise ValueError(f"source {source!r}: file not found")
    if path.suffix == ".jsonl":
        return _load_jsonl(path)
    return _load_parquet(path)


def _load_builtin(spec: str, default_seed: int) -> list[Problem]:
    usage = "expected 'builtin:<family|all>:<level>:<split>:<n>[:<seed>]'"
    fields = spec.split(":")[1:]
    if len(fields) not in (4, 5):
        raise ValueError(f"source {spec!r}: {usage}")
    family, level, split, n = fields[:4]
    if family != "all" and family not in FAMILIES:
        raise ValueError(f"source {spec!r}: family must be 'all' or one of {FAMILIES}")
    if split not in SPLITS:
        raise ValueError(f"source {spec!r}: split must be one of {SPLITS}")
    try:
        level_, n_ = int(level), int(n)
        seed = int(fields[4]) if len(fields) == 5 else default_seed
    except ValueError:
        raise ValueError(f"source {spec!r}: level, n and seed must be integers; {usage}") from None
    try:
        return builtin_problems(None if family == "all" else family, level_, split, n_, seed)
    except ValueError as err:
        raise ValueError(f"source {spec!r}: {err}") from None


def _load_jsonl(path: Path) -> list[Problem]:
    problems = []
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            where = f"{path}:{lineno}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                bad = raw[err.start : err.start + 1].hex()
                raise ValueError(
                    f"{where}: not valid UTF-8 (byte 0x{bad} at column {err.start + 1})"
                ) from None
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{where}: invalid JSON ({err.msg})") from None
            problems.append(_to_problem(record, where, f"{path.stem}/{lineno}"))
    return problems


def _load_parquet(path: Path) -> list[Problem]:
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(path).to_pylist()
    except Exception as err:  # pyarrow raises several types for unreadable files
        raise ValueError(f"{path}: not a readable Parquet file ({err})") from None
    return [_to_problem(row, f"{path}: row {i}", f"{path.stem}/{i}") for i, row in enumerate(rows)]


def _text(record: dict[str, Any], key: str, where: str, required: bool) -> str:
    value = record.get(key)
    if value is None:
        if required:
            raise ValueError(f"{where}: missing required field {key!r}")
        return ""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(f"{where}: field {key!r} must be a string or number, got {type(value).__name__}")
    text = str(value)
    if required and not text.strip():
        raise ValueError(f"{where}: field {key!r} is empty")
    return text


def _to_problem(record: Any, where: str, default_id: str) -> Problem:
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(record).__name__}")
    reference = _text(record, "reference", where, required=False)
    level = record.get("level", 0)
    if level is None:
        level = 0
    if isinstance(level, bool) or not isinstance(level, int):
        raise ValueError(f"{where}: field 'level' must be an integer, got {level!r}")
    split = record.get("split") or "train"
    if split not in SPLITS:
        raise ValueError(f"{where}: field 'split' must be one of {SPLITS}, got {split!r}")
    return Problem(
        id=_text(record, "id", where, required=False) or default_id,
        prompt=_text(record, "problem", where, required=True),
        answer=_text(record, "answer", where, required=True).strip(),
        reference=reference,
        steps=parse_reference_steps(reference),
        level=level,
        split=split,
        origin=where,
    )
