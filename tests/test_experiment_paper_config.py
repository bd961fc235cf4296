"""configs/experiment_paper_tiny.yaml: the experiment issue 15 asks for, validated without running it."""

import pathlib

from exprl.data import load_problems
from exprl.experiment import load_experiment_config
from exprl.experiment.stages import StageSpec, _trainer_config

PATH = pathlib.Path(__file__).resolve().parent.parent / "configs" / "experiment_paper_tiny.yaml"
ARMS = {"sft", "grpo", "exprl-outcome", "exprl-process", "self-distill", "rft"}


def trainer(cfg, method, settings, stage=1):
    spec = StageSpec(method, stage, pathlib.Path("base"), pathlib.Path("runs") / method, settings, cfg.steps,
                     cfg.seed, cfg.overrides)  # fmt: skip
    return _trainer_config(spec)


def test_sizes_seeds_and_arms():
    cfg = load_experiment_config(PATH)
    assert cfg.num_seeds >= 3 and cfg.steps >= 40
    sizes = {}
    for source in cfg.eval.problems:
        split = source.split(":")[3]
        sizes[split] = len(load_problems(source))
    assert sizes.keys() == {"test", "ood"} and min(sizes.values()) >= 128
    assert set(cfg.eval.ks) >= {1, 16} and cfg.eval.n >= 16
    assert set(cfg.stage1) >= ARMS
    assert cfg.stage1["rft"].kind == "rft"


def test_every_stage_config_loads_and_the_entropy_arms_differ_only_by_the_target():
    cfg = load_experiment_config(PATH)
    loaded = {m: trainer(cfg, m, s) for m, s in cfg.stage1.items() if m != "none"}
    assert loaded["self-distill"].method == "distill" and loaded["sft"].method == "sft"
    assert loaded["exprl-process"].algo.advantage == "process-delta"
    for method, run in loaded.items():
        assert run.steps == cfg.steps and run.eval.enabled is False
        if method.endswith("+entropy"):
            plain = loaded[method.removesuffix("+entropy")]
            assert run.algo.entropy_target is not None and plain.algo.entropy_target is None
            plain.algo.entropy_target = run.algo.entropy_target
            plain.algo.entropy_rate, plain.algo.entropy_coef_bounds = (
                run.algo.entropy_rate,
                run.algo.entropy_coef_bounds,
            )
            plain.name = run.name
            assert plain == run
    stage2 = trainer(cfg, "grpo", cfg.stage2, stage=2)
    assert (
        stage2.algo.scale == "none" and stage2.reward.truncation == "keep" and stage2.rollout.group_size == 32
    )
