#!/usr/bin/env bash
# Proves that the CUDA sources in csrc/ compile and link: builds exprl._C with its CUDA kernels against a
# CUDA build of torch (in .venv-cuda) with nvcc, loads the library (symbols resolved at load), and checks
# that every exprl op has a CUDA kernel registered. Needs no GPU.
#   CUDA_HOME             nvcc's toolkit (default: /usr/local/cuda-13.0, else the nvcc on PATH)
#   EXPRL_CUDA_TORCH      CUDA torch requirement (default: torch==2.14.1)
#   TORCH_CUDA_ARCH_LIST  GPU architectures to compile for (default: 9.0, the H100)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${CUDA_HOME:-}" ]; then
    if [ -x /usr/local/cuda-13.0/bin/nvcc ]; then CUDA_HOME=/usr/local/cuda-13.0
    elif command -v nvcc >/dev/null; then CUDA_HOME=$(dirname "$(dirname "$(command -v nvcc)")")
    fi
fi
if [ -z "${CUDA_HOME:-}" ] || [ ! -x "$CUDA_HOME/bin/nvcc" ]; then
    if [ "${CI:-}" = "true" ]; then echo "[cuda-build] FAILED: no nvcc found (set CUDA_HOME)" >&2; exit 1; fi
    echo "[cuda-build] skipped: no nvcc found (set CUDA_HOME to check the CUDA sources)"
    exit 0
fi
export CUDA_HOME TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} EXPRL_BUILD_CUDA=1
venv=$PWD/.venv-cuda
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
if ! "$venv/bin/python" -c "import torch, setuptools, ninja; assert torch.version.cuda" 2>/dev/null; then
    echo "[cuda-build] installing ${EXPRL_CUDA_TORCH:-torch==2.14.1} (CUDA build) into $venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
        "${EXPRL_CUDA_TORCH:-torch==2.14.1}" setuptools wheel ninja numpy
fi
# ATen/cuda/CUDAContext.h includes cusparse.h etc., which the CUDA wheels ship under nvidia/cu13/include.
site=$("$venv/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
for inc in "$site"/nvidia/cu*/include; do [ -d "$inc" ] && export CPATH="$inc${CPATH:+:$CPATH}"; done
out=build/cuda-check
echo "[cuda-build] nvcc: $("$CUDA_HOME/bin/nvcc" --version | tail -1); arch $TORCH_CUDA_ARCH_LIST"
start=$(date +%s)
"$venv/bin/python" setup.py -q build_ext --build-temp "$out/tmp" --build-lib "$out/lib"
so=$(ls "$out"/lib/exprl/_C*.so)
"$venv/bin/python" - "$so" <<'PY'
import sys
import torch
torch.ops.load_library(sys.argv[1])  # dlopen with all symbols resolved: the CUDA objects linked
ops = sorted(n for n in torch._C._dispatch_get_all_op_names() if n.startswith("exprl::"))
if not ops:
    sys.exit("[cuda-build] FAILED: the library registers no exprl:: ops")
# reads Python lists of host tensors in place: a CPU op by design (the CUDA path takes one flat tensor)
CPU_ONLY = {"exprl::rollout_batch_lists"}
missing = [n for n in ops if n not in CPU_ONLY and not torch._C._dispatch_has_kernel_for_dispatch_key(n, "CUDA")]
if missing:
    sys.exit(f"[cuda-build] FAILED: ops without a CUDA kernel: {missing}")
cuda_ops = [n for n in ops if n not in CPU_ONLY]
print(f"[cuda-build] {sys.argv[1]} loads; CUDA kernels registered for {len(cuda_ops)} ops: {', '.join(cuda_ops)}")
PY
echo "[cuda-build] OK in $(( $(date +%s) - start )) s"
