#!/usr/bin/env bash
# Sets everything up (scripts/setup.sh) and runs the main job: `exprl train` on the embedded default
# (the tiny model and tasks shipped in the package, on CPU). Extra arguments go to `exprl train`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/exprl train "$@"
