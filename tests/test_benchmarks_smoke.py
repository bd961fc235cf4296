"""The microbenchmarks run end to end (small shapes): a broken benchmark fails CI, not a release."""

import os
import subprocess
import sys

import pytest

from exprl.bench import benchmarks


@pytest.mark.slow
@pytest.mark.parametrize("name", list(benchmarks()))
def test_benchmark_runs_in_quick_mode(name, tmp_path):
    env = dict(os.environ, EXPRL_BENCH_OUT=str(tmp_path))
    done = subprocess.run(
        [sys.executable, "-m", "exprl", "bench", name, "--quick"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert " passed" in done.stdout
    written = sorted(p.suffix for p in tmp_path.iterdir())
    assert ".json" in written and ".md" in written, f"{name} wrote {written} to EXPRL_BENCH_OUT"
