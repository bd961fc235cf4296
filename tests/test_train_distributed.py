"""Launch-level behaviour: kill and resume continues exactly; two ranks match one rank step by step."""

import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import pytest
import yaml
from train_helpers import DIGIT_REWARD, read_records, toy_overrides

from exprl.train import run
from exprl.train.config import load_config, save_config

ROOT = pathlib.Path(__file__).resolve().parent.parent
# compared exactly between runs; timings and throughput are not reproducible
TIMING = ("time", "time/", "throughput/")


def deterministic(record: dict) -> dict:
    return {k: v for k, v in record.items() if not k.startswith(TIMING)}


def env() -> dict:
    e = dict(
        os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", OMP_NUM_THREADS="1"
    )
    e.setdefault("DS_ACCELERATOR", "cpu")
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        e.pop(key, None)  # the child is its own world (pytest's process group is set up in-process)
    return e


def kill_at_first_checkpoint(path: pathlib.Path, checkpoints: pathlib.Path) -> str:
    """Runs `exprl.train --config path` in a child and kills it with SIGKILL (no handler, no cleanup,
    possibly mid-write) once `checkpoints/latest` exists; returns the tag that `latest` names then."""
    child = subprocess.Popen(
        [sys.executable, "-m", "exprl.train", "--config", str(path)],
        env=env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 300
    while not (checkpoints / "latest").is_file() and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(child.pid, signal.SIGKILL)
    child.wait()
    return (checkpoints / "latest").read_text()


@pytest.fixture
def toy(tiny_models):
    return tiny_models["digits"], tiny_models["reward"]


def toy_config_file(toy, out: pathlib.Path, name: str, *extra: str) -> pathlib.Path:
    model, reward = toy
    cfg = load_config(
        None,
        [
            f"model.path={model}",
            f"output_dir={out}",
            f"name={name}",
            "progress=false",
            "data.train=builtin:all:1:train:32",
            "eval.enabled=false",
            "export=false",
            *toy_overrides(reward),
            *extra,
        ],
    )
    path = out / f"{name}.yaml"
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, path)
    return path


@pytest.mark.slow
def test_killed_run_resumes_exactly(toy, tmp_path):
    steps = [
        "steps=6",
        "checkpoint_every=2",
        "algo.ppo_epochs=2",
        "algo.kl_coef=0.01",
        "rollout.group_size=4",
        "algo.micro_batch_size=4",
    ]
    reference = read_records(run(load_config(toy_config_file(toy, tmp_path, "whole", *steps))))

    path = toy_config_file(toy, tmp_path, "killed", *steps)
    killed_at = kill_at_first_checkpoint(path, tmp_path / "killed" / "checkpoints")
    assert killed_at != "step_000006", "the run finished before it could be killed"
    partial = read_records(tmp_path / "killed")
    assert len(partial) < 6

    resumed = read_records(run(load_config(path)))
    assert [r["step"] for r in resumed] == list(range(1, 7))
    for got, want in zip(resumed, reference, strict=True):
        assert "rollout/wasted_decode_share" in deterministic(got)  # the sampler's cost repeats too
        assert deterministic(got) == deterministic(want)


@pytest.mark.slow
def test_resume_ignores_a_half_written_checkpoint(toy, tmp_path):
    path = toy_config_file(toy, tmp_path, "half", "steps=2", "checkpoint_every=1")
    run_dir = run(load_config(path))
    ckpt = run_dir / "checkpoints"
    # what a kill during the save of step 3 leaves: a temp tag, `latest` still naming step 2
    shutil.copytree(ckpt / "step_000002", ckpt / "tmp-step_000003")
    (ckpt / "tmp-step_000003" / "trainer_state.json").unlink()
    cfg = load_config(path, ["steps=3"])
    records = read_records(run(cfg))
    assert [r["step"] for r in records] == [1, 2, 3]
    assert (ckpt / "latest").read_text() == "step_000003" and not (ckpt / "tmp-step_000003").exists()


def launcher() -> list[str]:
    exe = shutil.which("deepspeed", path=str(pathlib.Path(sys.executable).parent)) or shutil.which(
        "deepspeed"
    )
    if exe is None:
        pytest.skip("the deepspeed launcher is not installed")
    return [exe]


# The toy reward, also writing every response it grades, with its problem, to $EXPRL_TEST_RESPONSES/rank<R>.
RECORDING_REWARD = (
    DIGIT_REWARD
    + """
import os
import pathlib


def recorded_stop_digit(problem, response):
    out = pathlib.Path(os.environ["EXPRL_TEST_RESPONSES"]) / f"rank{os.environ.get('RANK', '0')}"
    with out.open("a") as f:
        f.write(repr((problem.id, response)) + "\\n")
    return stop_digit(problem, response)
"""
)


def recorded(directory: pathlib.Path, rank: int) -> list[str]:
    return (directory / f"rank{rank}").read_text().splitlines()


@pytest.mark.slow
def test_two_ranks_match_one_rank(toy, tmp_path, monkeypatch):
    """The global batch (4 prompts x 8 samples) split over 2 ranks in micro-batches of 4 gives the same
    responses, and the same per-step loss, gradient norm, KL and entropy as 1 rank with micro-batches
    of 8 (tolerance: fp32 reduction order, rel 1e-4). The 2 ranks sample from sharded parameters in
    lockstep, each its half of the rows, the single rank all rows from gathered parameters."""
    reward = tmp_path / "recorded.py"
    reward.write_text(RECORDING_REWARD)
    common = [
        "steps=3",
        "checkpoint_every=0",
        "algo.kl_coef=0.01",
        "algo.entropy_coef=0.01",
        f"reward.options={{path: '{reward}:recorded_stop_digit'}}",
    ]
    for name in ("one", "two"):
        (tmp_path / f"responses-{name}").mkdir()
    monkeypatch.setenv("EXPRL_TEST_RESPONSES", str(tmp_path / "responses-one"))
    single = read_records(run(load_config(toy_config_file(toy, tmp_path, "one", *common))))
    monkeypatch.setenv("EXPRL_TEST_RESPONSES", str(tmp_path / "responses-two"))
    path = toy_config_file(
        toy, tmp_path, "two", *common, "algo.micro_batch_size=4", "rollout.gather_parameters=false"
    )
    result = subprocess.run(
        [
            *launcher(),
            "--num_gpus",
            "2",
            "--master_port",
            "29561",
            "--module",
            "exprl.train",
            "--config",
            str(path),
        ],
        env=env(),
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    double = read_records(tmp_path / "two")
    assert yaml.safe_load((tmp_path / "two" / "config.yaml").read_text())["algo"]["micro_batch_size"] == 4
    assert len(double) == len(single) == 3
    for a, b in zip(single, double, strict=True):
        for key in ("loss", "grad_norm", "kl", "entropy", "reward/judge", "response_length", "clip_frac"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-7), (a["step"], key)
    # per step, rank 0 samples the first 2 prompts x 8, rank 1 the last 2: together, the single rank's 32
    one = recorded(tmp_path / "responses-one", 0)
    first, second = (recorded(tmp_path / "responses-two", rank) for rank in (0, 1))
    assert len(one) == 3 * 32 and len(first) == len(second) == 3 * 16
    for step in range(3):
        halves = first[16 * step : 16 * (step + 1)] + second[16 * step : 16 * (step + 1)]
        assert one[32 * step : 32 * (step + 1)] == halves, step


TWO_RANKS = [
    "steps=3",
    "checkpoint_every=0",
    "algo.kl_coef=0.01",
    "algo.entropy_coef=0.01",
    "algo.micro_batch_size=4",
    "rollout.gather_parameters=false",
]


def launch(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [*launcher(), *args], env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def finish(child: subprocess.Popen) -> None:
    output, _ = child.communicate(timeout=400)
    assert child.returncode == 0, output[-3000:]


@pytest.mark.slow
def test_two_nodes_match_two_ranks(toy, tmp_path):
    """Two machines of one rank each, as a user launches them with a hostfile and no ssh (here both on
    localhost): the same 2-rank world, so every per-step metric equals the 1-node x 2-rank run's."""
    two_ranks = toy_config_file(toy, tmp_path, "two", *TWO_RANKS)
    finish(
        launch(
            "--num_gpus", "2", "--master_port", "29565", "--module", "exprl.train", "--config", str(two_ranks)
        )
    )
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("node-a slots=1\nnode-b slots=1\n")
    path = toy_config_file(toy, tmp_path, "nodes", *TWO_RANKS)
    nodes = [
        launch(
            "--hostfile",
            str(hostfile),
            "--no_ssh",
            f"--node_rank={rank}",
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            "29563",
            "--module",
            "exprl.train",
            "--config",
            str(path),
        )
        for rank in (0, 1)
    ]
    for node in nodes:
        finish(node)
    records, reference = read_records(tmp_path / "nodes"), read_records(tmp_path / "two")
    assert [r["step"] for r in records] == [1, 2, 3]
    assert [deterministic(r) for r in records] == [deterministic(r) for r in reference]


@pytest.mark.slow
def test_judge_on_the_reference_engine_under_two_rank_zero3(tmp_path):
    """reward.judge_model: reference grades with the trainer's frozen ZeRO-3 reference, its parameters
    gathered while scoring: on 2 ranks the judge's grades equal those of a 1-rank run whose hf judge
    loads its own copy of the same model. The model (policy, reference and judge) answers every prompt
    with "Score: 4" (the responses of step 1 all earn (4 - 1) / 4; later an odd response can make it
    ramble, unparsable, and be dropped), which it does only if the judge's weights were whole."""
    from rewards_tiny_model import save_tiny_llama

    grader = save_tiny_llama(tmp_path / "grader", says="Score: 4")
    common = [
        f"model.path={grader}",
        f"output_dir={tmp_path}",
        "progress=false",
        "data.train=builtin:chain:1:train:16",
        "eval.enabled=false",
        "export=false",
        "steps=2",
        "checkpoint_every=0",
        "reward.name=hf",
        "reward.truncation=keep",
        "rollout.prompts_per_step=2",
        "rollout.group_size=2",
        "rollout.max_new_tokens=12",
        "algo.micro_batch_size=2",
        "algo.kl_coef=0",
        "optim.lr=1e-6",
    ]
    options = "max_new_tokens: 16, batch_size: 1"  # one prompt per generate call: no padding differences
    own = load_config(None, [*common, "name=own", f"reward.options={{path: '{grader}', {options}}}"])
    single = read_records(run(own))
    cfg = load_config(
        None,
        [*common, "name=shared", "reward.judge_model=reference", f"reward.options={{{options}}}"]
        + ["algo.micro_batch_size=1"],
    )
    path = tmp_path / "shared.yaml"
    save_config(cfg, path)
    finish(
        launch("--num_gpus", "2", "--master_port", "29567", "--module", "exprl.train", "--config", str(path))
    )
    shared = read_records(tmp_path / "shared")
    assert len(shared) == len(single) == 2
    for a, b in zip(single, shared, strict=True):  # the same grades, and so the same responses dropped
        assert b["dropped_rollouts"] == a["dropped_rollouts"]
        assert b["reward/judge"] == pytest.approx(a["reward/judge"])
    assert shared[0]["dropped_rollouts"] == 0 and shared[0]["reward/judge"] == pytest.approx(0.75)
