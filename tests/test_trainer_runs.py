"""Runs that never lose work: one run per directory, rewards that cannot hang, prompts that fit the model,
judge failures that show, checkpoints that load safely."""

import os
import pathlib
import signal
import subprocess
import sys

import pytest
from trainer_fixtures import make_tiny_model, tiny_config

from exprl.errors import RunError
from exprl.train import run
from exprl.train.lock import hold_run_lock

ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("m") / "model")


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
