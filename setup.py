"""Builds the `exprl._C` extension from `csrc/`.

The C++ (CPU, OpenMP) sources are always built. The CUDA sources are added when
`EXPRL_BUILD_CUDA=1`, or when it is unset and both a CUDA build of torch and nvcc
(`CUDA_HOME`) are present. `EXPRL_BUILD_CUDA=0` forces a CPU-only build.
"""

import glob
import os
import sys

from setuptools import setup


def _want_cuda(torch_cuda_version: str | None, cuda_home: str | None) -> bool:
    flag = os.environ.get("EXPRL_BUILD_CUDA", "").strip()
    if flag == "1":
        if torch_cuda_version is None or cuda_home is None:
            sys.exit(
                "EXPRL_BUILD_CUDA=1 needs a CUDA build of torch and nvcc "
                f"(torch.version.cuda={torch_cuda_version}, CUDA_HOME={cuda_home})"
            )
        return True
    if flag in ("0", ""):
        return flag == "" and torch_cuda_version is not None and cuda_home is not None
    sys.exit(f"EXPRL_BUILD_CUDA must be 0 or 1, got {flag!r}")


def _extensions() -> tuple[list, dict]:
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

    cpp_sources = sorted(glob.glob("csrc/*.cpp"))
    cuda_sources = sorted(glob.glob("csrc/*.cu"))
    if not cpp_sources:
        return [], {}
    cxx_flags = ["-O3", "-fopenmp"]
    if _want_cuda(torch.version.cuda, CUDA_HOME) and cuda_sources:
        ext = CUDAExtension(
            "exprl._C",
            cpp_sources + cuda_sources,
            extra_compile_args={"cxx": cxx_flags + ["-DEXPRL_WITH_CUDA"], "nvcc": ["-O3"]},
            extra_link_args=["-fopenmp"],
        )
    else:
        ext = CppExtension(
            "exprl._C", cpp_sources, extra_compile_args=cxx_flags, extra_link_args=["-fopenmp"]
        )
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = _extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
