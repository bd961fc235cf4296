"""The Triton kernel compiles for an H100 (sm_90) without a GPU: the interpreter runs the kernel's
Python, so this is what catches code that only the real compiler rejects (types of loop-carried
values, constexpr branches), and checks that logits and gradient move in 16-byte vectors.

The compilation runs in a child process: with TRITON_INTERPRET=1 (the CPU test setting) Triton's
own library functions are interpreter objects that the compiler cannot use."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

# (logits dtype, compute_grad, HAS_OLD, HAS_REF, USE_DUAL_CLIP, KL_ESTIMATOR)
VARIANTS = [
    ("bf16", True, True, True, True, "k3"),
    ("fp16", True, False, False, False, "k1"),
    ("fp32", False, False, False, False, "k2"),
]
SCALARS = {"stride_logits_b": "i64", "stride_logits_t": "i64", "targets_ptr": "*i64", "weights_ptr": "*fp32",
           "advantages_ptr": "*fp32", "old_ptr": "*fp32", "ref_ptr": "*fp32", "logp_ptr": "*fp32",
           "entropy_ptr": "*fp32", "stride_dlogits_b": "i64", "stride_dlogits_t": "i64",
           "rows_per_batch": "i32", "vocab": "i32", "inv_temperature": "fp32", "clip_low": "fp32",
           "clip_high": "fp32", "dual_clip": "fp32", "kl_coef": "fp32", "entropy_coef": "fp32"}  # fmt: skip
# what the launcher's specialisation knows at run time: 16-byte aligned pointers, strides % 16 == 0
ALIGNED = (
    "logits_ptr",
    "stride_logits_b",
    "stride_logits_t",
    "dlogits_ptr",
    "stride_dlogits_b",
    "stride_dlogits_t",
    "vocab",
)


def compile_variants() -> dict:
    """PTX of each variant for sm_90 (run without TRITON_INTERPRET)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from exprl.kernels.triton_backend import MAX_BLOCK_V, _entropy_pg_kernel

    ptx = {}
    for dtype, compute_grad, has_old, has_ref, dual, kl in VARIANTS:
        constexprs = {"HAS_OLD": has_old, "HAS_REF": has_ref, "USE_DUAL_CLIP": dual, "KL_ESTIMATOR": kl,
                      "COMPUTE_GRAD": compute_grad, "IGNORE_INDEX": -100, "BLOCK_V": MAX_BLOCK_V}  # fmt: skip
        types = {"logits_ptr": f"*{dtype}", "dlogits_ptr": f"*{dtype}", **SCALARS}
        types.update(dict.fromkeys(constexprs, "constexpr"))
        # the signature must list the kernel's parameters in their order
        names = _entropy_pg_kernel.arg_names
        signature = {name: types[name] for name in names}
        attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in ALIGNED}
        source = ASTSource(fn=_entropy_pg_kernel, signature=signature, constexprs=constexprs, attrs=attrs)
        kernel = triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": 8})
        ptx[f"{dtype}-{compute_grad}"] = kernel.asm["ptx"]
    return ptx


@pytest.mark.slow
def test_kernel_compiles_for_sm90_with_vector_loads():
    root = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(root), env.get("PYTHONPATH", "")])
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    done = subprocess.run([sys.executable, __file__], capture_output=True, text=True, env=env, timeout=300)
    if done.returncode != 0 and ("ASTSource" in done.stderr or "GPUTarget" in done.stderr):
        pytest.skip(f"this Triton's compile API differs: {done.stderr.strip().splitlines()[-1]}")
    assert done.returncode == 0, done.stderr[-3000:]
    ptx = json.loads(done.stdout.strip().splitlines()[-1])
    for name, code in ptx.items():
        assert re.search(r"ld\.global(\.[\w:]+)*\.v4\.b32", code), f"{name}: logits not read in 16-byte loads"
        if name.endswith("True"):
            assert "st.global.v4.b32" in code, f"{name}: gradient not written in 16-byte stores"


if __name__ == "__main__":
    print(json.dumps(compile_variants()))
