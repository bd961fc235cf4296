#!/usr/bin/env bash
# Sets everything up (scripts/setup.sh) and runs the checks CI runs: ruff, the whole test suite on CPU
# against the compiled CPU extension (Triton kernels in the interpreter), and the CUDA build check.
# Extra arguments go to pytest, e.g. scripts/test.sh -k kernels
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
echo "[test] ruff"
.venv/bin/ruff check .
echo "[test] pytest"
EXPRL_REQUIRE_EXT=1 .venv/bin/python -m pytest -q --durations=15 "$@"
echo "[test] CUDA sources compile and link"
scripts/check_cuda_build.sh
