"""What building exprl's DeepSpeed engine leaves behind in the process (torch's own F.linear, no JIT-compiled
shared-memory collective op: process-wide, so checked in a fresh child), and that running the gathered
modules without ZeRO-3's hooks changes no number."""

import json
import os
import pathlib
import subprocess
import sys

import pytest
from test_train_distributed import deterministic
from test_train_fused_linear import partitioned
from train_helpers import read_records

from exprl.train import run
from exprl.train.config import load_config

ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture
def toy(tiny_models):
    return tiny_models["digits"], tiny_models["reward"]


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


@pytest.mark.slow
@pytest.mark.parametrize("fused", [True, False])
def test_gathering_for_sampling_and_the_reference_changes_no_number(toy, tmp_path, fused):
    """rollout.gather_parameters: the sampler and the reference's log-prob pass run on the gathered modules
    without ZeRO-3's hooks, or through them on partitioned parameters: the same run, bit for bit."""
    common = ["steps=2", "checkpoint_every=0", "algo.kl_coef=0.01", f"algo.fused_linear={str(fused).lower()}"]
    runs = {}
    for gather in (True, False):
        name = f"gather-{gather}"
        runs[gather] = run(
            load_config(partitioned(toy, tmp_path, name, *common, f"rollout.gather_parameters={gather}"))
        )
    gathered, sharded = read_records(runs[True]), read_records(runs[False])
    assert len(gathered) == 2 and all(r["kl"] > 0 for r in gathered[1:])  # the reference took part
    assert [deterministic(r) for r in gathered] == [deterministic(r) for r in sharded]
