"""One evaluation-settings type: `exprl eval`, the trainer's eval section and the experiment agree."""

import dataclasses
import typing

import pytest

from exprl.eval import EvalSettings
from exprl.eval.cli import build_parser, settings_from_args
from exprl.experiment.config import ExperimentConfig
from exprl.train.config import EvalConfig, load_config


def test_cli_defaults_are_the_settings_defaults():
    assert settings_from_args(build_parser().parse_args([])) == EvalSettings()


def test_trainer_eval_section_is_the_settings_plus_a_switch():
    trainer = dataclasses.asdict(load_config(None).eval)
    assert trainer.pop("enabled") is True
    assert trainer == dataclasses.asdict(EvalSettings())
    assert issubclass(EvalConfig, EvalSettings)


def test_experiment_eval_section_is_the_settings():
    assert typing.get_type_hints(ExperimentConfig)["eval"] is EvalSettings


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["--n", "0"], "--n: must be >= 1"),
        (["--n", "4", "--k", "1,8"], r"--k: every k must be in \[1, n=4\]"),
        (["--max-new-tokens", "0"], "--max-new-tokens: must be >= 1"),
        (["--temperature", "-1"], "--temperature: must be >= 0"),
        (["--verifier", "bleu"], "--verifier: unknown reward 'bleu'"),
        (["--problems", ","], "--problems: list at least one"),
    ],
)
def test_cli_errors_name_the_flag(argv, match):
    with pytest.raises(ValueError, match=match):
        settings_from_args(build_parser().parse_args(argv))
