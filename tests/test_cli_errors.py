"""Every command reports a user error as one line on stderr with exit status 2; --debug shows the
traceback; under the distributed launcher only rank 0 prints it."""

import os
import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


def env() -> dict:
    e = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu")
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        e.pop(key, None)
    return e


def exprl(*args: str, cwd: pathlib.Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "exprl", *args],
        cwd=cwd,
        env=env(),
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "steps=0"], "exprl train: override: steps: must be >= 1, got 0"),
        (["train", "name=..", "steps=1"], "exprl train: override: name: must be a plain directory name"),
        (["sft", "no_such_key=1"], "exprl sft: override: unknown key 'no_such_key'"),
        (["train", "--config", "missing.yaml"], "exprl train: config file not found: missing.yaml"),
        (["eval", "--problems", "nothing.txt"], "exprl eval: source 'nothing.txt': expected"),
    ],
)
def test_a_user_error_is_one_line(argv, message, tmp_path):
    result = exprl(*argv, cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), result.stderr
    assert not (tmp_path / "runs").exists()


def test_debug_shows_the_traceback(tmp_path):
    result = exprl("train", "steps=0", "--debug", cwd=tmp_path)
    assert result.returncode == 1
    assert "Traceback (most recent call last)" in result.stderr
    assert "ValueError: override: steps: must be >= 1, got 0" in result.stderr


@pytest.mark.slow
def test_only_rank_zero_prints_under_the_launcher(tmp_path):
    exe = shutil.which("deepspeed", path=str(pathlib.Path(sys.executable).parent))
    if exe is None:
        pytest.skip("the deepspeed launcher is not installed")
    result = subprocess.run(
        [exe, "--num_gpus", "2", "--master_port", "29571", "--module", "exprl.train", "steps=0"],
        cwd=tmp_path,
        env=env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert output.count("steps: must be >= 1") == 1, output[-3000:]
    assert "Traceback" not in output
