"""What building exprl's DeepSpeed engine leaves behind in the process: torch's own F.linear, and no
JIT-compiled shared-memory collective op. Both are process-wide, so each check runs in a fresh child."""

import json
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent

CHILD = """
import json
import torch

torch_linear = torch.nn.functional.linear
from deepspeed import comm

from exprl.train.config import load_config
from exprl.train.engine import build_engine, deepspeed_config, init_distributed, load_policy

init_distributed()
cfg = load_config(None, [])
engine = build_engine(load_policy(cfg)[0], deepspeed_config(cfg, 2, 1, 1))
print(json.dumps({
    "torch_linear": torch.nn.functional.linear is torch_linear,
    "shm_op": comm.comm.cdb.shm_comm_op is not None,
}))
"""


def test_the_engine_keeps_torch_linear_and_skips_the_shm_op():
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu")
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)  # the child is its own world of one
    out = subprocess.run(
        [sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=300, check=True
    )
    state = json.loads(out.stdout.strip().splitlines()[-1])
    # DeepSpeed's memory_efficient_linear would have swapped in its autograd.Function for the process
    assert state["torch_linear"]
    # the op backs only DeepSpeed-Inference's all-reduce; compiling it is up to 30 s of a cold start
    assert not state["shm_op"]
