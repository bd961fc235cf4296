"""`exprl experiment` orchestration with an injected fake stage runner and evaluator (no training here).

The fake runner "trains" by writing a model directory whose skill is the starting model's skill plus a
per-method gain, and a metrics.jsonl; the fake evaluator turns a skill into per-problem correct counts.
The real end-to-end run with the trainer is tests/test_experiment_e2e.py.
"""

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from exprl.eval.passk import pass_at_k
from exprl.eval.report import EvalReport, ProblemResult, SplitMetrics
from exprl.experiment import StageResult, load_experiment_config, parse_config, run_experiment
from exprl.train.metrics import MetricsLogger

N = 8
GAIN = {"sft": 1, "grpo": 2, "exprl-outcome": 3, "exprl-process": 4}
STAGE2_GAIN = 1


def skill_of(model_dir):
    return int((model_dir / "skill.txt").read_text())


class FakeRunner:
    def __init__(self, fail_on_call=None):
        self.calls = []
        self.fail_on_call = fail_on_call

    def __call__(self, spec):
        self.calls.append((spec.method, spec.stage))
        if self.fail_on_call == len(self.calls):
            raise KeyboardInterrupt  # an interruption in the middle of a stage
        gain = GAIN[spec.method] if spec.stage == 1 else STAGE2_GAIN
        export = spec.run_dir / "export"
        export.mkdir(parents=True)
        (export / "skill.txt").write_text(str(skill_of(spec.init_model) + gain))
        with MetricsLogger(spec.run_dir) as logger:
            for step in range(spec.steps):
                metrics = {"reward/sparse": 0.1 * step + gain, "entropy": 2.0 - 0.1 * step, "tokens": 10}
                if (spec.method, spec.stage) == (
                    "sft",
                    1,
                ):  # logs its work differently: a rate and a duration
                    metrics.update({"rate": 4.0, "seconds": 0.5 * (step + 1)})
                logger.log(step, metrics)
        return StageResult(model_dir=export, metrics_path=spec.run_dir / "metrics.jsonl")


class FakeEvaluator:
    def __init__(self):
        self.calls = []

    def __call__(self, model_dir):
        self.calls.append(model_dir)
        skill = skill_of(model_dir)
        problems, splits = [], {}
        for split, offset in (("test", 0), ("ood", -2)):
            # Problem i of a split has min(N, max(0, skill + offset - i)) correct samples.
            counts = [min(N, max(0, skill + offset - i)) for i in range(4)]
            problems += [ProblemResult(f"{split}{i}", split, "f", 1, c) for i, c in enumerate(counts)]
            splits[split] = SplitMetrics(
                num_problems=4,
                pass_at_k={k: sum(pass_at_k(N, c, k) for c in counts) / 4 for k in (1, 4, 8)},
                mean_response_length=10.0 + skill,
                mean_entropy=1.0 / (1 + skill),
                never_solved=sum(c == 0 for c in counts) / 4,
                truncated=0.0,
                ungraded=0,
            )
        return EvalReport(settings={"n": N, "ks": [1, 4, 8]}, splits=splits, problems=problems)


@pytest.fixture
def setup(tmp_path):
    base = tmp_path / "base"
    base.mkdir()
    (base / "skill.txt").write_text("1")
    (base / "config.json").write_text("{}")  # a model directory, as far as the driver looks
    for name in ("sft", "rl"):
        (tmp_path / f"{name}.yaml").write_text("name: x\n")
    data = {
        "name": "fake",
        "out_dir": str(tmp_path / "report"),
        "work_dir": str(tmp_path / "runs"),
        "base_model": str(base),
        "seed": 5,
        "steps": 3,
        "overrides": ["rollout.group_size=4"],
        "stage1": {
            "none": {},
            "sft": {"config": str(tmp_path / "sft.yaml")},
            "grpo": {"config": str(tmp_path / "rl.yaml"), "overrides": ["reward.name=exact"]},
            "exprl-outcome": {"config": str(tmp_path / "rl.yaml")},
            "exprl-process": {"config": str(tmp_path / "rl.yaml")},
        },
        "stage2": {"config": str(tmp_path / "rl.yaml")},
        "eval": {"problems": ["builtin:all:1:test:4"], "n": N, "ks": [1, 4, 8]},
        "report": {"token_counts": {"tokens": ["tokens"], "flops": ["rate*seconds", "tokens"]}},
    }
    return tmp_path, data


def table(markdown, heading):
    """Rows of the first Markdown table under `heading`, as lists of cell strings (header first)."""
    lines = markdown.split(f"## {heading}\n", 1)[1].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    rows = lines[start:end]
    return [[c.strip() for c in r.strip("|").split("|")] for r in rows if not r.startswith("|---")]


def test_runs_every_stage_and_fills_every_cell(setup):
    tmp_path, data = setup
    runner, evaluator = FakeRunner(), FakeEvaluator()
    out = run_experiment(parse_config(data), stage_runner=runner, evaluator=evaluator, log=lambda _: None)

    methods = list(GAIN)
    assert runner.calls == [(m, 1) for m in methods] + [(m, 2) for m in ["none", *methods]]
    assert len(evaluator.calls) == 1 + len(methods) + len(methods) + 1  # base, Stage I, Stage II

    md = (out / "report.md").read_text()
    header, *rows = table(md, "pass@k after Stage I and after Stage II")
    assert header[0] == "method" and len(header) == 1 + 2 * 2 * 2  # (pass@1, pass@8) x 2 splits x 2 stages
    assert [r[0] for r in rows] == ["none", *methods]
    for row in rows:
        assert len(row) == len(header) and all(re.fullmatch(r"\d\.\d{3}", c) for c in row[1:]), row

    # Spot-check one cell against the fake's skill: exprl-process Stage II = 1 + 4 + 1 = 6.
    results = json.loads((out / "results.json").read_text())
    counts = [min(N, max(0, 6 - i)) for i in range(4)]
    expected = sum(pass_at_k(N, c, 1) for c in counts) / 4
    cell = rows[-1][header.index("II: test pass@1")]
    assert float(cell) == pytest.approx(expected, abs=5e-4)
    assert results["evals"]["exprl-process-stage2"]["splits"]["test"]["pass_at_k"]["1"] == pytest.approx(
        expected
    )

    # Newly solved: the base (skill 1) never solves test problems 1..3; skill 6 solves all of them.
    cov_header, *cov_rows = table(md, "Coverage, entropy and length")
    row = next(r for r in cov_rows if r[:2] == ["exprl-process", "II"])
    assert row[cov_header.index("test newly solved")] == "3/3"

    comp_header, *comp_rows = table(md, "Compute (measured)")
    sft = next(r for r in comp_rows if r[0] == "sft")
    assert sft[comp_header.index("I steps logged")] == "3" and sft[comp_header.index("I tokens")] == "30"
    assert sft[comp_header.index("I flops")] == "12"  # 4 * (0.5 + 1.0 + 1.5), the per-step product
    assert sft[comp_header.index("II flops")] == "30"  # Stage II falls back to "tokens"
    assert "sft stage 2 flops: `tokens`" in md and "sft stage 1 flops" not in md
    none = next(r for r in comp_rows if r[0] == "none")
    assert none[comp_header.index("I steps logged")] == "0" and none[comp_header.index("I tokens")] == "0"
    assert "Budget mismatch" not in md

    for name in ("passk", "reward", "entropy"):
        assert (out / "plots" / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
    # The report directory holds only the report; the trainer runs live in work_dir.
    assert sorted(p.name for p in out.iterdir()) == ["evals", "plots", "report.md", "results.json"]
    assert (tmp_path / "runs" / "grpo" / "stage2" / "DONE.json").is_file()
    assert results["training_curves"]["grpo"]["stage1"]["reward/sparse"][2] == [2, pytest.approx(2.2)]
    assert results["seeds"] == {"train": 5, "eval": 0, "all_train": [5]}  # EvalSettings.seed by default


def test_resumes_after_an_interruption(setup):
    tmp_path, data = setup
    cfg = parse_config(data)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(
            cfg, stage_runner=FakeRunner(fail_on_call=2), evaluator=FakeEvaluator(), log=lambda _: None
        )
    runner, evaluator = FakeRunner(), FakeEvaluator()
    run_experiment(cfg, stage_runner=runner, evaluator=evaluator, log=lambda _: None)
    assert runner.calls[0] == ("grpo", 1)  # sft Stage I finished before the interruption
    assert ("sft", 1) not in runner.calls and len(runner.calls) == 2 * len(GAIN)  # 4 + 5 stages, less one
    assert len(evaluator.calls) == 2 * len(GAIN) + 1  # only the base evaluation had finished

    # A third run has nothing left to do.
    runner, evaluator = FakeRunner(), FakeEvaluator()
    run_experiment(cfg, stage_runner=runner, evaluator=evaluator, log=lambda _: None)
    assert runner.calls == [] and evaluator.calls == []


def test_a_retrained_stage_one_invalidates_its_stage_two(setup):
    tmp_path, data = setup
    cfg = parse_config(data)
    run_experiment(cfg, stage_runner=FakeRunner(), evaluator=FakeEvaluator(), log=lambda _: None)
    (tmp_path / "runs" / "grpo" / "stage1" / "DONE.json").unlink()
    import shutil

    shutil.rmtree(tmp_path / "runs" / "grpo" / "stage1" / "export")
    runner, evaluator = FakeRunner(), FakeEvaluator()
    run_experiment(cfg, stage_runner=runner, evaluator=evaluator, log=lambda _: None)
    assert runner.calls == [("grpo", 1), ("grpo", 2)]
    assert len(evaluator.calls) == 2


def test_changed_settings_are_refused_on_resume(setup):
    tmp_path, data = setup
    run_experiment(
        parse_config(data), stage_runner=FakeRunner(), evaluator=FakeEvaluator(), log=lambda _: None
    )
    with pytest.raises(ValueError, match=r"DONE.json: finished with different steps"):
        run_experiment(
            parse_config({**data, "steps": 4}),
            stage_runner=FakeRunner(),
            evaluator=FakeEvaluator(),
            log=print,
        )
    with pytest.raises(ValueError, match=r"base.json: finished with different n"):
        run_experiment(
            parse_config({**data, "eval": {**data["eval"], "n": 16}}),
            stage_runner=FakeRunner(),
            evaluator=FakeEvaluator(),
            log=print,
        )


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        (lambda d: d.pop("steps"), ValueError, r"exp.yaml: missing key 'steps'"),
        (lambda d: d.update(steps=0), ValueError, r"exp.yaml: steps: must be >= 1"),
        (lambda d: d.update(stepz=1), ValueError, r"exp.yaml: unknown key 'stepz'"),
        (lambda d: d["stage1"].update(sft={}), ValueError, r"exp.yaml: stage1.sft.config: missing"),
        (lambda d: d["stage1"].update(sft={"config": "nope.yaml"}), ValueError, r"stage1.sft.config: .*nope"),
        (
            lambda d: d["stage1"].update(none={"kind": "rft"}),
            ValueError,
            r"stage1.none: 'none' means",
        ),
        (lambda d: d["stage2"].update(kind="rft"), ValueError, r"stage2.kind: Stage II"),
        (lambda d: d["eval"].update(ks=[1, 9]), ValueError, r"exp.yaml: eval.ks: every k"),
        (lambda d: d["eval"].update(problems=[]), ValueError, r"exp.yaml: eval.problems"),
        (lambda d: d["eval"].update(tasks=[]), ValueError, r"exp.yaml: unknown key 'eval.tasks'"),
        (lambda d: d.update(seed="0"), ValueError, r"exp.yaml: seed: expected an integer"),
        (lambda d: d["report"].update(token_counts={"x": []}), ValueError, r"report.token_counts.x"),
    ],
)
def test_config_errors_name_the_file_and_key(setup, change, error, match):
    tmp_path, data = setup
    change(data)
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(error, match=match):
        load_experiment_config(path)


class SeededRunner(FakeRunner):
    """Stage I gains one skill point more on odd seeds: the seeds disagree."""

    def __call__(self, spec):
        result = super().__call__(spec)
        if spec.stage == 1 and spec.seed % 2:
            skill = skill_of(result.model_dir) + 1
            (result.model_dir / "skill.txt").write_text(str(skill))
        return result


def test_several_seeds_give_means_with_bootstrap_intervals(setup):
    tmp_path, data = setup
    data.update(num_seeds=2, stage1={"grpo": data["stage1"]["grpo"]})
    runner, evaluator = SeededRunner(), FakeEvaluator()
    out = run_experiment(parse_config(data), stage_runner=runner, evaluator=evaluator, log=lambda _: None)
    assert runner.calls == [("grpo", 1), ("grpo", 2)] * 2
    for seed in (5, 6):
        assert (tmp_path / "runs" / f"seed{seed}" / "grpo" / "stage2" / "DONE.json").is_file()
        assert (out / "evals" / f"seed{seed}" / "grpo-stage1.json").is_file()
    assert len(evaluator.calls) == 1 + 2 * 2  # the base model once

    results = json.loads((out / "results.json").read_text())
    assert results["seeds"]["all_train"] == [5, 6]
    # seed 5: skill 1 + 2 = 3, seed 6: 4 after Stage I; problem i of "test" has skill - i correct of N
    for key, skills in (("grpo-stage1", (3, 4)), ("grpo-stage2", (4, 5))):
        pass1 = [min(N, max(0, s - i)) / N for s in skills for i in range(4)]
        never = [float(max(0, s - i) == 0) for s in skills for i in range(4)]
        mean, low, high = results["intervals"][key]["test pass@1"]
        assert mean == pytest.approx(sum(pass1) / len(pass1))
        assert low <= mean <= high and high - low > 0
        assert results["intervals"][key]["test never_solved"][0] == pytest.approx(sum(never) / len(never))
    md = (out / "report.md").read_text()
    header, *rows = table(md, "Across seeds: mean [95% interval]")
    assert header[:2] == ["method", "stage"] and [r[:2] for r in rows] == [["grpo", "I"], ["grpo", "II"]]
    assert all(re.fullmatch(r"\d\.\d{3} \[\d\.\d{3}, \d\.\d{3}\]", c) for r in rows for c in r[2:])


def test_parallel_jobs_give_the_serial_report(setup):
    """`jobs=2` runs the (seed, method) chains in two spawned processes; the numbers equal a serial run's,
    and the closing serial pass finds every part done."""
    tmp_path, data = setup
    data.update(num_seeds=2, stage1={m: data["stage1"][m] for m in ("none", "grpo", "exprl-process")})
    serial = run_experiment(
        parse_config(data), stage_runner=SeededRunner(), evaluator=FakeEvaluator(), log=lambda _: None
    )
    data.update(out_dir=str(tmp_path / "report-par"), work_dir=str(tmp_path / "runs-par"))
    lines = []
    parallel = run_experiment(
        parse_config(data), stage_runner=SeededRunner(), evaluator=FakeEvaluator(), log=lines.append, jobs=2
    )
    # The parent evaluated the base model; the workers did every other part.
    assert [line.split(":")[0] for line in lines if line.startswith(("[run ]", "[eval]"))] == ["[eval] base"]
    for seed in (5, 6):
        for method in ("grpo", "exprl-process"):
            assert (tmp_path / "runs-par" / f"seed{seed}" / method / "stage2" / "DONE.json").is_file()
    want = json.loads((serial / "results.json").read_text())
    got = json.loads((parallel / "results.json").read_text())
    assert got["intervals"] == want["intervals"] and got["newly_solved"] == want["newly_solved"]
    assert "--jobs 2`" in (parallel / "report.md").read_text()

    runner = SeededRunner()
    run_experiment(parse_config(data), stage_runner=runner, evaluator=FakeEvaluator(), log=lambda _: None)
    assert runner.calls == []
    with pytest.raises(ValueError, match="jobs must be an int >= 1"):
        run_experiment(parse_config(data), jobs=0)


KILLED_PARENT_SCRIPT = """
import json, os, sys, time
from pathlib import Path

from exprl.eval.report import EvalReport, SplitMetrics
from exprl.experiment import parse_config, run_experiment


class SlowRunner:
    def __call__(self, spec):
        (Path(sys.argv[1]) / f"{os.getpid()}.pid").write_text("")
        time.sleep(300)


def evaluate(model_dir):
    split = SplitMetrics(1, {1: 0.0}, 1.0, 1.0, 1.0, 0.0, 0)
    return EvalReport(settings={}, splits={"test": split}, problems=[])


if __name__ == "__main__":
    cfg = parse_config(json.loads(Path(sys.argv[2]).read_text()))
    run_experiment(cfg, stage_runner=SlowRunner(), evaluator=evaluate, log=lambda _: None, jobs=2)
"""


@pytest.mark.skipif(sys.platform != "linux", reason="the parent-death signal is Linux's prctl")
def test_killed_experiment_takes_its_workers_with_it(setup):
    """A killed `exprl experiment --jobs 2` leaves no worker running its chain (it would hold the run
    directory's lock against the rerun)."""
    tmp_path, data = setup
    pids, script, config = tmp_path / "pids", tmp_path / "run.py", tmp_path / "cfg.json"
    pids.mkdir()
    script.write_text(KILLED_PARENT_SCRIPT)
    config.write_text(json.dumps(data))
    parent = subprocess.Popen([sys.executable, str(script), str(pids), str(config)])
    try:
        deadline = time.monotonic() + 120
        while len(list(pids.iterdir())) < 2:
            assert parent.poll() is None, "the experiment exited before its workers started"
            assert time.monotonic() < deadline, "the workers never started"
            time.sleep(0.2)
    finally:
        parent.kill()
        parent.wait()
    workers = [int(p.stem) for p in pids.iterdir()]

    def running(pid):
        status = Path(f"/proc/{pid}/status")
        return status.exists() and "\nState:\tZ" not in status.read_text()

    deadline = time.monotonic() + 30
    while any(running(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(running(pid) for pid in workers)
