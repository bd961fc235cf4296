#!/usr/bin/env bash
# Creates (or refreshes) the project's virtual environment in .venv and installs exprl into it in
# editable mode with its compiled extension (exprl._C, CPU build). Idempotent: a second run only
# reinstalls what changed. Needs nothing but Python 3.11+.
#   EXPRL_PYTHON   interpreter that creates the venv (default: python3)
#   EXPRL_TORCH    torch requirement installed first (default: torch==2.13.0, a CPU build here)
#   EXPRL_EXTRAS   extras to install (default: dev,serving,trl)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
venv=${EXPRL_VENV:-$root/.venv}
python=${EXPRL_PYTHON:-python3}
torch_req=${EXPRL_TORCH:-torch==2.13.0}
extras=${EXPRL_EXTRAS:-dev,serving,trl}
export PIP_DISABLE_PIP_VERSION_CHECK=1

if [ ! -x "$venv/bin/python" ]; then
    echo "[setup] creating $venv"
    "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip install --quiet)

stamp="$venv/.exprl-deps"
deps_key=$( (echo "$torch_req $extras"; cat pyproject.toml) | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$deps_key" ]; then
    echo "[setup] installing $torch_req and the dependencies of pyproject.toml [$extras]"
    "${pip[@]}" "$torch_req" numpy setuptools wheel ninja
    mapfile -t reqs < <("$venv/bin/python" - "$extras" <<'PY'
import sys, tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
reqs = list(project["dependencies"])
for extra in filter(None, sys.argv[1].split(",")):
    reqs += project["optional-dependencies"][extra]
print("\n".join(reqs))
PY
)
    # torch is pinned by the first install; the constraint keeps other packages from replacing it.
    "$venv/bin/python" -c "import torch; print('torch==' + torch.__version__)" > "$venv/.torch-pin"
    "${pip[@]}" -c "$venv/.torch-pin" "${reqs[@]}"
    echo "$deps_key" > "$stamp"
fi

# exprl itself (editable, no deps: they are above) and its extension, rebuilt when csrc/ or setup.py change.
ext_key=$( (cat setup.py; cat csrc/* 2>/dev/null) | sha256sum | cut -d' ' -f1)
if [ "$(cat "$venv/.exprl-ext" 2>/dev/null)" != "$ext_key" ] || ! "$venv/bin/python" -c "import exprl" 2>/dev/null; then
    echo "[setup] installing exprl (editable) and building exprl._C"
    # compat mode: the source tree goes on sys.path and setuptools builds exprl/_C*.so in place.
    EXPRL_BUILD_CUDA=${EXPRL_BUILD_CUDA:-0} "${pip[@]}" --no-build-isolation --no-deps -e . \
        --config-settings editable_mode=compat
    echo "$ext_key" > "$venv/.exprl-ext"
fi
echo "[setup] ready: $venv ($("$venv/bin/python" -c 'import torch; print("torch", torch.__version__)'))"
