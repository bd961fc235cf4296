"""The experiment driver: trains every method of the comparison (docs/design.md §1) with the trainer and
evaluates every model with the evaluation service, resumably, into a report directory.

    config.py   the experiment YAML, read by the trainer's config machinery and validated
    driver.py   orchestration and resume (`run_experiment`)
    stages.py   stage runners (the trainer, RFT) and the evaluator
    report.py   report.md, results.json, plots
    cli.py      `exprl experiment`
"""

from exprl.experiment.config import ExperimentConfig, load_experiment_config, parse_config
from exprl.experiment.driver import run_experiment
from exprl.experiment.stages import StageResult, StageSpec

__all__ = [
    "ExperimentConfig",
    "StageResult",
    "StageSpec",
    "load_experiment_config",
    "parse_config",
    "run_experiment",
]
