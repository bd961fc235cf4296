"""benchmarks/common.py, the benchmarks' shared plumbing: ratios against a baseline, peak memory in a
child process, timing only through pytest-benchmark, peers that skip, and the result files' names."""

import datetime
import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest
import torch

PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "common.py"
_spec = importlib.util.spec_from_file_location("benchmarks_common", PATH)
common = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = common  # dataclasses look their module up
_spec.loader.exec_module(common)


def test_compare_pairs_each_row_with_its_baseline():
    rows = [
        {"case": "a", "backend": "eager", "ms": 8.0},
        {"case": "a", "backend": "ours", "ms": 2.0},
        {"case": "b", "backend": "eager", "ms": 3.0},
        {"case": "b", "backend": "ours", "ms": 6.0},
        {"case": "c", "backend": "ours", "ms": 1.0},  # no eager row for c
    ]
    common.compare(rows, baseline={"backend": "eager"}, match=("case",), metric="ms", name="speedup",
                   baseline_over_row=True)  # fmt: skip
    common.compare(rows, baseline={"backend": "eager"}, match=("case",), metric="ms", name="fraction",
                   baseline_over_row=False)  # fmt: skip
    assert [r["speedup"] for r in rows] == [1.0, 4.0, 1.0, 0.5, None]
    assert [r["fraction"] for r in rows] == [1.0, 0.25, 1.0, 2.0, None]


def test_ratio_and_fmt_handle_missing_values():
    assert common.ratio(3.0, 2.0) == 1.5
    assert common.ratio(3.0, 0.0) is None and common.ratio(None, 2.0) is None
    assert common.fmt(0.1234, ".1%") == "12.3%" and common.fmt(None, ".2f", "x") == "-"
    assert common.fmt(2.0, ".2f", "x") == "2.00x"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU (RSS) path")
def test_peak_memory_mib_measures_the_call_in_a_child(tmp_path):
    module = tmp_path / "bench_probe.py"
    module.write_text(
        "import torch\n\n"
        "def prepare(mib):\n"
        "    held = torch.ones(2**18)  # allocated before the call: not counted\n"
        "    return lambda: torch.ones(mib * 2**18).sum() + held.sum()\n"
    )
    peak = common.peak_memory_mib(str(module), mib=96)
    assert 96 <= peak < 96 + 16, peak  # a 96 MiB float32 tensor, plus the interpreter's small change


def test_peak_memory_mib_reports_a_failing_child(tmp_path):
    module = tmp_path / "bench_broken.py"
    module.write_text("def prepare():\n    raise ValueError('no inputs')\n")
    with pytest.raises(RuntimeError, match="no inputs"):
        common.peak_memory_mib(str(module))


def test_measure_without_benchmark_enable_runs_once_and_skips(benchmark):
    # the repository's pytest default is --benchmark-disable, as in this test session
    if not benchmark.disabled:
        pytest.skip("checks the --benchmark-disable path")
    calls = []
    with pytest.raises(pytest.skip.Exception, match="--benchmark-enable"):
        common.measure(benchmark, calls.append, 1, rounds=5)
    assert calls == [1]


def test_peer_skips_with_the_package_name_when_missing(monkeypatch):
    monkeypatch.setattr(common, "PEERS", {})
    with pytest.raises(pytest.skip.Exception, match="no-such-peer is not installed"):
        common.peer("no_such_peer_module", "no-such-peer")
    assert common.peer("pytest") is pytest
    expected = {"no-such-peer": "not installed", "pytest": pytest.__version__}
    assert dict(common.PEERS) == expected


def test_report_writes_json_and_markdown_under_the_naming_scheme(tmp_path, monkeypatch):
    monkeypatch.setenv("EXPRL_BENCH_OUT", str(tmp_path))
    report = common.Report("bench_probe", "Probe", size=3)
    assert report.write({"x": str}) is None  # nothing timed: nothing written
    report.add(backend="eager", ms=1.5)
    stem = report.write({"backend": lambda r: r["backend"], "ms": lambda r: common.fmt(r["ms"], ".1f")})
    today = datetime.datetime.now(datetime.UTC).strftime("%Y%m%d")
    assert re.fullmatch(rf"bench_probe_(cpu|cuda)(_quick)?_{today}", stem.name), stem.name
    payload = json.loads(stem.with_suffix(".json").read_text())
    assert payload["results"] == [{"backend": "eager", "ms": 1.5}]
    assert payload["header"]["size"] == 3 and payload["header"]["torch"] == torch.__version__
    markdown = stem.with_suffix(".md").read_text()
    assert markdown.startswith("# Probe — ") and "| eager | 1.5 |" in markdown
