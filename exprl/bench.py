"""`exprl bench`: runs the microbenchmarks in the repository's benchmarks/ folder with pytest-benchmark.

Each `benchmarks/bench_<name>.py` is one benchmark, run as `exprl bench <name>` ("_" written "-"). Each
times exprl's path and eager PyTorch side by side in one run and writes its table (JSON and Markdown)
under benchmarks/results/ (benchmarks/README.md has the naming scheme).
"""

import argparse
import os
import pathlib
import subprocess
import sys

FOLDER = pathlib.Path(__file__).resolve().parent.parent / "benchmarks"


def benchmarks() -> dict[str, pathlib.Path]:
    """Benchmark name -> file, one per benchmarks/bench_*.py (empty outside a clone)."""
    files = sorted(FOLDER.glob("bench_*.py"))
    return {path.stem.removeprefix("bench_").replace("_", "-"): path for path in files}


def main(argv: list[str]) -> int:
    found = benchmarks()
    parser = argparse.ArgumentParser(prog="exprl bench", description=__doc__)
    parser.add_argument("which", nargs="*", help=f"benchmarks to run: {', '.join(found)} (default: all)")
    parser.add_argument("--quick", action="store_true", help="small shapes: a smoke run in seconds")
    args, extra = parser.parse_known_args(argv)
    if not found:
        print(f"exprl bench: no benchmarks at {FOLDER}: run it from a clone", file=sys.stderr)
        return 2
    unknown = [name for name in args.which if name not in found]
    if unknown:
        parser.error(f"unknown benchmark {unknown[0]!r}; choose from {', '.join(found)}")
    files = [str(found[name]) for name in (args.which or found)]
    env = dict(os.environ, EXPRL_BENCH_QUICK="1" if args.quick else os.environ.get("EXPRL_BENCH_QUICK", "0"))
    command = [sys.executable, "-m", "pytest", *files, "--benchmark-enable", "-q", "-s", *extra]
    return subprocess.call(command, cwd=FOLDER.parent, env=env)
