"""What every benchmark under benchmarks/ shares: the quick or full mode, machine info, timing, peak
memory, the copy bandwidth probe, peers, and the writers. A benchmark file keeps only its cases and its
table layout.

A benchmark is a pytest-benchmark file, `benchmarks/bench_<name>.py`; `exprl bench <name>` runs it (the
name with "-" for "_"), and tests/test_benchmarks_smoke.py runs each one in quick mode. Inside a file:

    from common import QUICK, Report, measure, peak_memory_mib

    REPORT = Report("bench_loss", "entropy_pg_loss benchmark")

    def test_bench(benchmark):
        timing = measure(benchmark, fn, *args, rounds=ROUNDS)     # pytest-benchmark's statistics
        REPORT.add(case=..., median_ms=1e3 * timing.median_s, peak_mib=peak_memory_mib(__file__, "prepare"))

    @pytest.fixture(scope="module", autouse=True)
    def write_table():
        yield
        REPORT.write(columns)                                      # JSON + Markdown, machine info in both

A peer column (another library a user would otherwise pick, e.g. Liger-Kernel): add its name to the
backends a test is parametrized over and start that case with `liger = peer("liger_kernel", "liger-kernel")`;
without the package the case is skipped with a message, the header lists it as "not installed", and
`compare` leaves the other rows' ratios as they are.

Environment: EXPRL_BENCH_QUICK=1 picks the small (smoke) sizes; EXPRL_BENCH_OUT the output folder
(default benchmarks/results/, or <tmp>/exprl_bench/ in quick mode, so smoke runs leave the checkout clean).

Timing: pytest-benchmark's own statistics (`benchmark.pedantic` with explicit rounds, then
`benchmark.stats`), in the process that runs every case of the file, so that the ratios side by side come
from one run. On CUDA each round ends with `torch.cuda.synchronize()`. With --benchmark-disable (the
repository's pytest default) a case runs once and is skipped with a message: pass --benchmark-enable or
use `exprl bench`.

Peak memory, CPU and CUDA alike: one child process per measurement, so one case's allocator state (glibc
arenas, the CUDA caching allocator, Triton's autotuning) can neither hide nor inflate another's. The child
imports the benchmark file, calls its `prepare(**kwargs)` (inputs allocated, warm-up done) and measures the
callable that returns. CPU: peak RSS (Linux VmHWM, reset through /proc/self/clear_refs) minus the RSS
before the call. CUDA: torch.cuda.max_memory_allocated minus the allocation before the call.

Bandwidth: `copy_bandwidth_gbps()` times a large device-to-device copy (CUDA) or memcpy (CPU) in the same
process, counting the bytes read plus the bytes written, so a kernel's GB/s (counted the same way) can be
given as a fraction of what a plain copy reaches on that machine in that run.

Results are named `<benchmark>_<device>[_quick]_<YYYYMMDD>.{json,md}`: <benchmark> the file's stem
(bench_loss), <device> `cpu` or `cuda` (the GPU's name is in the header), `_quick` for smoke sizes, the
UTC date. A GPU session's folder from benchmarks/gpu_check.sh is committed as
`gpu_check_<gpu-name>_<YYYYMMDD>/`, a variant run's files go in a subfolder named after the variant.
"""

from __future__ import annotations

import datetime
import functools
import importlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
QUICK = os.environ.get("EXPRL_BENCH_QUICK", "0") == "1"
# HBM peak bandwidth in GB/s of the data-centre GPUs we expect; others use clock x bus width
PEAK_GBPS = {"H100 SXM": 3350, "H100 80GB HBM3": 3350, "H100 PCIe": 2000, "H100 NVL": 3900, "H200": 4800,
             "A100-SXM4-80GB": 2039, "A100-SXM4-40GB": 1555, "A100 80GB PCIe": 1935}  # fmt: skip
# peers a benchmark compared against in this process: distribution name -> version or "not installed"
PEERS: dict[str, str] = {}


def out_dir() -> Path:
    """Where results go: EXPRL_BENCH_OUT, else benchmarks/results/ (full) or <tmp>/exprl_bench/ (quick)."""
    default = Path(tempfile.gettempdir()) / "exprl_bench" if QUICK else Path(__file__).parent / "results"
    return Path(os.environ.get("EXPRL_BENCH_OUT", default))


def result_stem(name: str, when: datetime.datetime) -> Path:
    """`<out_dir>/<name>_<device>[_quick]_<YYYYMMDD>`: the one naming scheme of results (no suffix)."""
    return out_dir() / f"{name}_{DEVICE}{'_quick' if QUICK else ''}_{when:%Y%m%d}"


def gpu_peak_gbps() -> float | None:
    """The GPU's peak memory bandwidth in GB/s (table above, else clock x bus width), None without CUDA."""
    if not CUDA:
        return None
    props = torch.cuda.get_device_properties(0)
    peak = next((v for k, v in PEAK_GBPS.items() if k in props.name), None)
    if peak is None and getattr(props, "memory_clock_rate", 0) and getattr(props, "memory_bus_width", 0):
        peak = 2 * props.memory_clock_rate * 1e3 * props.memory_bus_width / 8 / 1e9
    return peak


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what `platform` knows."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def commit() -> str:
    """EXPRL_COMMIT, else the checkout's `git rev-parse --short HEAD` (+ "-dirty" with local changes)."""
    if os.environ.get("EXPRL_COMMIT"):
        return os.environ["EXPRL_COMMIT"]
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, check=True).stdout.strip()  # fmt: skip
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("-dirty" if dirty else "")


def package_version(module: str) -> str | None:
    """`module.__version__` when it imports, else None."""
    try:
        return importlib.import_module(module).__version__
    except ImportError:
        return None


def machine_info() -> dict[str, Any]:
    """What a reader needs to compare two result files: date, machine, load, versions, commit, mode."""
    info: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "host": platform.node(),
        "cpu": cpu_model(),
        "cpu cores": os.cpu_count(),
        "cpu cores usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch threads": torch.get_num_threads(),
        "load average (1, 5, 15 min)": ", ".join(f"{x:.1f}" for x in os.getloadavg()),
        "torch": torch.__version__,
        "triton": package_version("triton"),
        "gpu": torch.cuda.get_device_name() if CUDA else None,
        "gpu peak GB/s": gpu_peak_gbps(),
        "commit": commit(),
        "mode": "quick" if QUICK else "full",
    }
    if PEERS:
        info["peers"] = dict(PEERS)
    return info


@dataclass(frozen=True)
class Timing:
    """pytest-benchmark's statistics of one case, in seconds, and the value of the last call."""

    median_s: float
    min_s: float
    mean_s: float
    stddev_s: float
    rounds: int
    result: Any


def synchronize() -> None:
    """Wait for the GPU's queued work (no-op on CPU), so a timer stops when the work is done."""
    if CUDA:
        torch.cuda.synchronize()


def measure(benchmark, fn: Callable, *args, rounds: int, warmup_rounds: int = 1, **kwargs) -> Timing:
    """Time `fn(*args, **kwargs)` with `benchmark.pedantic` and return pytest-benchmark's statistics.

    Each round synchronises CUDA before it returns. With --benchmark-disable the call runs once and the
    test is skipped with a message (there are no statistics to report).
    """

    def call():
        out = fn(*args, **kwargs)
        synchronize()
        return out

    synchronize()
    result = benchmark.pedantic(call, rounds=rounds, warmup_rounds=warmup_rounds)
    if benchmark.stats is None:
        pytest.skip("ran once without timing: benchmarks need --benchmark-enable (or run `exprl bench`)")
    stats = benchmark.stats.stats
    return Timing(stats.median, stats.min, stats.mean, stats.stddev, stats.rounds, result)


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def peak_above_current_mib(run: Callable[[], object]) -> float:
    """Peak memory of `run()` above what is held before it, in MiB (CUDA allocator, else CPU RSS).

    In-process; benchmarks call `peak_memory_mib`, which runs this in a fresh child.
    """
    if CUDA:
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        run()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    base = _rss_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    run()
    return (_rss_kib("VmHWM") - base) / 1024


def peak_memory_mib(module_file: str, prepare: str = "prepare", **kwargs) -> float:
    """Peak memory in MiB of one call, measured in a child process.

    The child imports `module_file` (a benchmark's `__file__`), calls `<prepare>(**kwargs)`, which
    allocates the inputs, warms up and returns a zero-argument callable, and reports
    `peak_above_current_mib` of that callable. `kwargs` must be JSON values.
    """
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    )
    cmd = [sys.executable, __file__, "--peak", str(module_file), prepare, json.dumps(kwargs)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"peak-memory child for {prepare}(**{kwargs}) failed:\n{done.stderr[-4000:]}")
    return float(done.stdout.strip().splitlines()[-1])


def _peak_in_this_process(module_file: str, prepare: str, kwargs: dict) -> float:
    spec = importlib.util.spec_from_file_location(Path(module_file).stem, module_file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # as an import would, for dataclasses and pickling
    spec.loader.exec_module(module)
    return peak_above_current_mib(getattr(module, prepare)(**kwargs))


@functools.cache
def copy_bandwidth_gbps() -> float:
    """GB/s (bytes read + bytes written) of the best of several large copies on this process's device.

    CUDA: device-to-device `copy_` of 1 GiB (64 MiB in quick mode). CPU: `copy_` of 256 MiB (32 MiB quick)
    with the benchmark's torch threads, which is memcpy. Measured once per process and cached.
    """
    nbytes = (64 if QUICK else 1024 if CUDA else 256) * 2**20
    src = torch.ones(nbytes, dtype=torch.uint8, device=DEVICE)
    dst = torch.empty_like(src)
    dst.copy_(src)  # warm-up: page faults, allocator
    best = float("inf")
    for _ in range(3 if QUICK else 10):
        synchronize()
        start = time.perf_counter()
        dst.copy_(src)
        synchronize()
        best = min(best, time.perf_counter() - start)
    return 2 * nbytes / best / 1e9


def peer(module: str, distribution: str | None = None):
    """Import a peer library (the one a user would otherwise pick) for a side-by-side column.

    Returns the module; when it is not installed the calling test is skipped with a message that names
    the package, and the header of the written files says "not installed", so the column is absent rather
    than the benchmark failing. `distribution` is the pip name when it differs from the import name.
    """
    name = distribution or module
    try:
        imported = importlib.import_module(module)
    except ImportError as error:
        PEERS[name] = "not installed"
        pytest.skip(f"peer {name} is not installed ({error}): its column is skipped (pip install {name})")
    try:
        PEERS[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        PEERS[name] = getattr(imported, "__version__", "installed")
    return imported


def fmt(value, spec: str = ".2f", suffix: str = "") -> str:
    """`format(value, spec) + suffix`, or "-" for None (a ratio without its baseline, a skipped peer)."""
    return "-" if value is None else f"{value:{spec}}{suffix}"


def ratio(numerator, denominator) -> float | None:
    """numerator / denominator, None when either is missing or the denominator is not positive."""
    if numerator is None or denominator is None or denominator <= 0:
        return None
    return numerator / denominator


def compare(rows: list[dict], *, baseline: dict, match: Sequence[str], metric: str, name: str,
            baseline_over_row: bool) -> None:  # fmt: skip
    """Set `row[name]` on every row to its ratio against the baseline row with the same `match` fields.

    The baseline row is the one whose fields equal `baseline` (e.g. {"backend": "eager"}).
    baseline_over_row=True gives a speedup from times (baseline / row); False a fraction (row / baseline),
    e.g. of peak memory. Rows without a baseline get None.
    """
    for row in rows:
        base = next(
            (
                r
                for r in rows
                if all(r.get(k) == v for k, v in baseline.items())
                and all(r.get(k) == row.get(k) for k in match)
            ),
            None,
        )
        pair = (base.get(metric), row.get(metric)) if base else (None, None)
        row[name] = ratio(*pair) if baseline_over_row else ratio(*reversed(pair))


def markdown_table(rows: Iterable[dict], columns: dict[str, Callable[[dict], str]]) -> list[str]:
    """Markdown lines of a table: one column per heading, each cell `columns[heading](row)`."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row) for cell in columns.values()) + " |" for row in rows]
    return lines


class Report:
    """The rows of one benchmark file and their writing as `<stem>.json` and `<stem>.md` (see result_stem).

    `header` holds the benchmark's own settings (sizes, rounds); the machine info is added when written.
    """

    def __init__(self, name: str, title: str, **header):
        self.name = name
        self.title = title
        self.header = header
        self.rows: list[dict] = []

    def add(self, **row) -> dict:
        """Append one result row (JSON values) and return it."""
        self.rows.append(row)
        return row

    def write(
        self,
        columns: dict[str, Callable[[dict], str]],
        *,
        rows: list[dict] | None = None,
        summary: dict | None = None,
        notes: Sequence[str] = (),
    ) -> Path | None:
        """Write the JSON (header, rows, summary) and the Markdown (header, table, notes); print the stem.

        `rows` overrides the table's rows (e.g. one line per group); the JSON keeps `self.rows`. Returns
        the stem, or None when no case was timed (nothing is written).
        """
        if not self.rows:
            return None
        header = {**machine_info(), **self.header}
        stem = result_stem(self.name, datetime.datetime.now(datetime.UTC))
        stem.parent.mkdir(parents=True, exist_ok=True)
        payload = {"header": header, "results": self.rows, "summary": summary or {}}
        stem.with_suffix(".json").write_text(json.dumps(payload, indent=2, default=str) + "\n")
        lines = [f"# {self.title} — {header['date']}", ""]
        lines += [f"- {key}: {value}" for key, value in header.items() if key != "date" and value is not None]
        lines += ["", *markdown_table(self.rows if rows is None else rows, columns)]
        if notes:
            lines += ["", *notes]
        stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
        print(f"\nwrote {stem}.json and {stem}.md")
        return stem


if __name__ == "__main__" and len(sys.argv) == 5 and sys.argv[1] == "--peak":
    print(_peak_in_this_process(sys.argv[2], sys.argv[3], json.loads(sys.argv[4])))
