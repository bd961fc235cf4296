"""MetricsLogger: metrics.jsonl, TensorBoard events, PNG plots, resume, disabled ranks."""

import json

import pytest
import torch

from exprl.train.metrics import MetricsLogger, plot_file_name, read_metrics


def test_writes_jsonl_tensorboard_and_plots(tmp_path):
    with MetricsLogger(tmp_path / "run") as logger:
        logger.log(0, {"reward": 0.25, "entropy": torch.tensor(1.5)})
        logger.log(1, {"reward": 0.5, "kl/k3": 0.01})
        plots = logger.plot()

    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [0, 1]
    assert lines[0]["reward"] == 0.25 and lines[0]["entropy"] == 1.5
    assert lines[1]["kl/k3"] == 0.01

    assert sorted(p.name for p in plots) == ["entropy.png", "kl_k3.png", "reward.png"]
    for p in plots:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "run" / "tb"))
    events.Reload()
    reward = [(e.step, e.value) for e in events.Scalars("reward")]
    assert reward == [(0, 0.25), (1, 0.5)]
    assert [e.step for e in events.Scalars("kl/k3")] == [1]


def test_resume_appends_and_later_values_win(tmp_path):
    with MetricsLogger(tmp_path) as logger:
        logger.log(0, {"loss": 3.0})
        logger.log(1, {"loss": 2.0})
    # The resumed run restarts from the step-0 checkpoint and re-logs step 1.
    with MetricsLogger(tmp_path) as logger:
        logger.log(1, {"loss": 1.5})
        logger.log(2, {"loss": 1.0})
    assert read_metrics(tmp_path / "metrics.jsonl") == {"loss": [(0, 3.0), (1, 1.5), (2, 1.0)]}


def test_disabled_logger_writes_nothing(tmp_path):
    logger = MetricsLogger(tmp_path / "rank1", enabled=False)
    logger.log(0, {"reward": 1.0})
    assert logger.plot() == []
    logger.close()
    assert not (tmp_path / "rank1").exists()


def test_non_finite_values_are_kept(tmp_path):
    with MetricsLogger(tmp_path) as logger:
        logger.log(0, {"loss": float("nan")})
    ((step, value),) = read_metrics(tmp_path / "metrics.jsonl")["loss"]
    assert step == 0 and value != value


@pytest.mark.parametrize(
    ("step", "metrics", "error", "match"),
    [
        (1.0, {"a": 1.0}, TypeError, "step"),
        (-1, {"a": 1.0}, ValueError, "step"),
        (0, {"a": "high"}, TypeError, r"metrics\['a'\]"),
        (0, {"a": torch.ones(2)}, TypeError, r"metrics\['a'\]"),
        (0, {"step": 1.0}, ValueError, r"metrics\['step'\]"),
        (0, [("a", 1.0)], TypeError, "metrics"),
    ],
)
def test_bad_input_is_named(tmp_path, step, metrics, error, match):
    with MetricsLogger(tmp_path) as logger, pytest.raises(error, match=match):
        logger.log(step, metrics)


def test_read_metrics_names_file_and_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 0, "a": 1}\n{"a": 2}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2"):
        read_metrics(path)


def test_plot_file_name():
    assert plot_file_name("train/reward mean") == "train_reward_mean.png"
