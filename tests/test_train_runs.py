"""Runs that never lose work: one run per directory, rewards that cannot hang, prompts that fit the model,
judge failures that show, checkpoints that load safely."""

import json
import os
import pathlib
import random
import re
import shutil
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
from train_helpers import read_records, tiny_config
from transformers import AutoTokenizer

from exprl.errors import RunError
from exprl.train import checkpoint, run
from exprl.train.engine import init_distributed
from exprl.train.lifecycle import postfix
from exprl.train.lock import hold_run_lock

ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def model(tiny_models):
    return tiny_models["plain"]


def test_a_second_run_on_a_locked_directory_fails_at_once(model, tmp_path):
    cfg = tiny_config(model, tmp_path)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import pathlib, sys, time\n"
            "from exprl.train.lock import hold_run_lock\n"
            "with hold_run_lock(pathlib.Path(sys.argv[1])):\n"
            "    print('held', flush=True)\n"
            "    time.sleep(600)\n",
            str(cfg.run_dir),
        ],
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunError, match=rf"{cfg.run_dir} is in use by another run \(pid {holder.pid} on "):
            run(cfg)
        assert sorted(p.name for p in cfg.run_dir.iterdir()) == [".lock"]  # nothing written, nothing loaded
    finally:
        holder.send_signal(signal.SIGKILL)  # a crash: the kernel releases the lock
        holder.wait()
    with hold_run_lock(cfg.run_dir):
        pass


HANGS = """
import time

calls = [0]

def every_fourth(problem, response):
    calls[0] += 1  # a fresh worker (after a kill) counts from 0 again
    if calls[0] % 4 == 0:
        time.sleep(3600)
    return 0.5

def always(problem, response):
    time.sleep(3600)
"""


def hanging_config(model, tmp_path, function, *extra):
    path = tmp_path / "hangs.py"
    path.write_text(HANGS)
    return tiny_config(
        model,
        tmp_path,
        "reward.name=python",
        f"reward.options={{path: '{path}:{function}'}}",
        "reward.timeout_s=0.5",
        *extra,
    )


@pytest.mark.slow
def test_a_reward_that_never_returns_stops_the_first_step_with_its_failure(model, tmp_path):
    cfg = hanging_config(model, tmp_path, "always", "steps=1")
    with pytest.raises(
        RunError,
        match=r"step 1: reward 'python' dropped 8 of 8 rollouts \(timeout 8\); first failure: "
        r"reward 'python' did not return within reward.timeout_s=0.5 s on problem",
    ):
        run(cfg)


@pytest.mark.slow
def test_calls_past_the_time_limit_are_dropped_and_counted(model, tmp_path):
    records = read_records(run(hanging_config(model, tmp_path, "every_fourth")))
    # 8 rollouts a step: calls 4 and 8 hang; each kill restarts the count
    assert [r["dropped/timeout"] for r in records] == [2.0, 2.0]
    assert [r["dropped_rollouts"] for r in records] == [2.0, 2.0]


@pytest.mark.slow
def test_a_judge_at_a_closed_port_stops_the_run_naming_the_url(model, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the socket is
    url = f"http://127.0.0.1:{port}/v1"
    cfg = tiny_config(
        model, tmp_path, "reward.name=http", f"reward.options={{base_url: '{url}', model: judge, retries: 0}}"
    )
    with pytest.raises(
        RunError,
        match=r"step 1: reward 'http' dropped 8 of 8 rollouts \(connection_error 8\); first failure: "
        rf"POST {re.escape(url)}/chat/completions: cannot connect",
    ):
        run(cfg)


def test_the_progress_bar_shows_drops_and_their_causes():
    metrics = {"reward/judge": 0.5, "dropped_rollouts": 3.0, "dropped/timeout": 2.0, "dropped/unparsed": 1.0}
    metrics["dropped/server_error"] = 0.0
    assert postfix(metrics) == {"reward": "0.5", "drop": "3", "timeout": "2", "unparsed": "1"}
    assert "drop" not in postfix({"reward/judge": 0.5, "dropped_rollouts": 0.0, "dropped/timeout": 0.0})


def data_with_a_huge_problem(tmp_path) -> pathlib.Path:
    path = tmp_path / "data.jsonl"
    lines = [json.dumps({"problem": f"Q: {i}+1\nA: ", "answer": str(i + 1)}) for i in range(3)]
    lines.insert(2, json.dumps({"problem": "1+" * 50_000 + "1", "answer": "50001"}))  # line 3
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_prompt_longer_than_the_model_is_an_error_naming_file_line_and_lengths(model, tmp_path):
    data = data_with_a_huge_problem(tmp_path)
    cfg = tiny_config(model, tmp_path, f"data.train={data}", "rollout.max_new_tokens=12")
    tokenizer = AutoTokenizer.from_pretrained(model)
    assert not tokenizer.chat_template  # the model reads the problem bare
    prompt_tokens = len(tokenizer("1+" * 50_000 + "1")["input_ids"])
    with pytest.raises(
        ValueError,
        match=rf"{re.escape(str(data))}:3: the prompt is {prompt_tokens} tokens; with "
        rf"rollout.max_new_tokens=12 it needs {prompt_tokens + 12} positions, and the model has 256 "
        r"\(set data.skip_too_long=true",
    ):
        run(cfg)


@pytest.mark.slow
def test_too_long_prompts_can_be_skipped_and_counted(model, tmp_path, capsys):
    data = data_with_a_huge_problem(tmp_path)
    run(tiny_config(model, tmp_path, f"data.train={data}", "data.skip_too_long=true", "steps=1"))
    assert (
        f"data.skip_too_long: skipped 1 of 4 problems; first: {data}:3: the prompt is"
        in capsys.readouterr().out
    )


class RunsCodeWhenUnpickled:
    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


class CheckpointOnDisk:
    """An engine stand-in whose DeepSpeed part of the checkpoint always loads."""

    def load_checkpoint(self, ckpt_dir, tag, **_):
        return f"{ckpt_dir}/{tag}", {}


def test_a_checkpoint_file_that_would_run_code_is_refused(tmp_path):
    init_distributed()
    tag = tmp_path / "step_000001"
    tag.mkdir()
    (tag / "trainer_state.json").write_text('{"step": 1}')
    marker = tmp_path / "code-ran"
    torch.save({"python": RunsCodeWhenUnpickled(marker)}, tag / "rng_rank0.pt")
    with pytest.raises(RunError, match=r"step_000001/rng_rank0\.pt: not an RNG state saved by exprl"):
        checkpoint.load(CheckpointOnDisk(), tmp_path, "step_000001")
    assert not marker.exists()


def test_rng_state_round_trips_through_a_weights_only_file(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    np.random.normal()  # numpy caches a second gaussian: part of its state
    torch.save(checkpoint.rng_state(), tmp_path / "rng.pt")
    expected = (
        random.random(),
        random.gauss(0, 1),
        np.random.normal(),
        np.random.rand(),
        torch.rand(2).tolist(),
    )
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    checkpoint.load_rng_state(tmp_path / "rng.pt")
    assert (
        random.random(),
        random.gauss(0, 1),
        np.random.normal(),
        np.random.rand(),
        torch.rand(2).tolist(),
    ) == expected


def deterministic(record: dict) -> dict:
    return {k: v for k, v in record.items() if not k.startswith(("time", "throughput/"))}


@pytest.mark.slow
def test_a_missing_latest_checkpoint_resumes_from_the_one_before(model, tmp_path, capsys):
    first = read_records(run(tiny_config(model, tmp_path, "steps=3", "checkpoint_every=1")))
    ckpt = tmp_path / "t" / "checkpoints"
    kept = {p: p.stat().st_mtime_ns for p in ckpt.glob("step_00000[12]/*")}
    shutil.rmtree(ckpt / "step_000003")
    records = read_records(run(tiny_config(model, tmp_path, "steps=4", "checkpoint_every=1")))
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert [deterministic(r) for r in records[:3]] == [
        deterministic(r) for r in first
    ]  # step 3 exactly again
    assert {p: p.stat().st_mtime_ns for p in kept} == kept  # the intact checkpoints were never rewritten
    assert (
        f"resume: step_000003: {ckpt / 'step_000003'} is missing (named by {ckpt / 'latest'}); "
        "resuming from step_000002 instead" in capsys.readouterr().err
    )


@pytest.mark.slow
def test_a_corrupt_checkpoint_falls_back_and_none_intact_is_an_error(model, tmp_path, capsys):
    run(tiny_config(model, tmp_path, "steps=2", "checkpoint_every=1"))
    ckpt = tmp_path / "t" / "checkpoints"
    (weights,) = (ckpt / "step_000002").glob("*model_states.pt")
    size = weights.stat().st_size
    with weights.open("r+b") as f:
        f.truncate(100)
    records = read_records(run(tiny_config(model, tmp_path, "steps=2", "checkpoint_every=1")))
    assert [r["step"] for r in records] == [1, 2]
    assert (
        f"resume: step_000002: {weights} holds 100 bytes, {size} were written; resuming from step_000001 "
        "instead" in capsys.readouterr().err
    )
    for state in ckpt.glob("step_*/trainer_state.json"):
        state.write_text(state.read_text()[:-3])  # a truncated trainer_state.json in every checkpoint
    metrics = (tmp_path / "t" / "metrics.jsonl").read_text()
    with pytest.raises(
        RunError, match=rf"{re.escape(str(ckpt))}: no intact checkpoint to resume from \(step_000002: "
    ):
        run(tiny_config(model, tmp_path, "steps=3", "checkpoint_every=1"))
    assert (tmp_path / "t" / "metrics.jsonl").read_text() == metrics  # nothing lost


@pytest.mark.slow
def test_a_changed_config_on_resume_takes_effect_and_is_recorded_or_is_refused(model, tmp_path):
    run(tiny_config(model, tmp_path, "steps=2", "checkpoint_every=1"))  # tiny_config: optim.lr=1e-3
    run_dir = tmp_path / "t"
    records = read_records(
        run(tiny_config(model, tmp_path, "steps=3", "checkpoint_every=1", "optim.lr=1e-2"))
    )
    assert [r["lr"] for r in records] == [1e-3, 1e-3, 1e-2]
    changes = [json.loads(line) for line in (run_dir / "config_changes.jsonl").read_text().splitlines()]
    assert changes == [{"from_step": 3, "changes": {"steps": [2, 3], "optim.lr": [1e-3, 1e-2]}}]
    saved = (run_dir / "config.yaml").read_text()
    assert "lr: 0.01" in saved and "steps: 3" in saved

    with pytest.raises(
        ValueError,
        match=r"<defaults>: cannot resume .*step_000003 with seed \(0 -> 1\), rollout.group_size \(4 -> 2\): "
        "these keys are fixed for a run's life",
    ):
        run(
            tiny_config(
                model, tmp_path, "steps=4", "seed=1", "rollout.group_size=2", "algo.micro_batch_size=2"
            )
        )
    assert (run_dir / "config.yaml").read_text() == saved  # config.yaml still describes what ran


@pytest.mark.slow
def test_resume_never_refuses_an_existing_run_unless_told_to_overwrite(model, tmp_path):
    first = read_records(run(tiny_config(model, tmp_path, "steps=2")))
    with pytest.raises(
        RunError, match=rf"{re.escape(str(tmp_path / 't'))} holds a run \(checkpoints, config.yaml"
    ):
        run(tiny_config(model, tmp_path, "steps=1", "resume=never"))
    assert read_records(tmp_path / "t") == first
    records = read_records(run(tiny_config(model, tmp_path, "steps=1", "resume=never", "overwrite=true")))
    assert [r["step"] for r in records] == [1]
    assert deterministic(records[0]) == deterministic(first[0])
    assert not (tmp_path / "t" / "checkpoints" / "step_000002").exists()


def test_sft_checks_prompt_and_reference_against_the_model(model, tmp_path):
    data = tmp_path / "data.jsonl"
    long_reference = "1+1=2 ### " * 40 + "Answer: 2"
    data.write_text(json.dumps({"problem": "Q: 1+1\nA: ", "answer": "2", "reference": long_reference}) + "\n")
    tokenizer = AutoTokenizer.from_pretrained(model)
    length = (
        len(tokenizer("Q: 1+1\nA: ")["input_ids"])
        + len(tokenizer(long_reference, add_special_tokens=False)["input_ids"])
        + 1
    )
    with pytest.raises(
        ValueError, match=rf"{re.escape(str(data))}:1: the prompt and reference solution are {length} tokens"
    ):
        run(
            tiny_config(
                model,
                tmp_path,
                f"data.train={data}",
                "method=sft",
                "sft.batch_size=1",
                "sft.micro_batch_size=1",
            )
        )
