"""`exprl bench`: runs the microbenchmarks in the repository's benchmarks/ folder with pytest-benchmark.

Each benchmark times exprl's path and eager PyTorch side by side in one run and writes its table
(JSON and Markdown) under benchmarks/results/.
"""

import argparse
import os
import pathlib
import subprocess
import sys

BENCHMARKS = {"loss": "bench_loss.py", "batching": "bench_batching.py", "train-step": "bench_train_step.py"}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="exprl bench", description=__doc__)
    parser.add_argument("which", nargs="*", help=f"benchmarks to run: {', '.join(BENCHMARKS)} (default: all)")
    parser.add_argument("--quick", action="store_true", help="small shapes: a smoke run in seconds")
    args, extra = parser.parse_known_args(argv)
    unknown = [name for name in args.which if name not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark {unknown[0]!r}; choose from {', '.join(BENCHMARKS)}")
    folder = pathlib.Path(__file__).resolve().parent.parent / "benchmarks"
    if not folder.is_dir():
        print(f"exprl bench: no benchmarks folder at {folder}: run it from a clone", file=sys.stderr)
        return 2
    files = [str(folder / BENCHMARKS[name]) for name in (args.which or BENCHMARKS)]
    env = dict(os.environ, EXPRL_BENCH_QUICK="1" if args.quick else os.environ.get("EXPRL_BENCH_QUICK", "0"))
    command = [sys.executable, "-m", "pytest", *files, "--benchmark-enable", "-q", "-s", *extra]
    return subprocess.call(command, cwd=folder.parent, env=env)
