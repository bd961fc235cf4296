"""Config loading: YAML + key=value overrides into validated dataclasses; DeepSpeed config derivation."""

import json
import pathlib

import pytest
import torch

from exprl.train.config import batch_layout, load_config, save_config
from exprl.train.engine import deepspeed_config

CONFIGS = pathlib.Path(__file__).resolve().parent.parent / "configs"
# the trainer's configs (configs/ also holds other commands' files, e.g. the experiment's)
TRAINER_CONFIGS = [
    CONFIGS / name
    for name in (
        "exprl_outcome_tiny.yaml",
        "exprl_process_tiny.yaml",
        "grpo_sparse_tiny.yaml",
        "sft_tiny.yaml",
    )
] + sorted((CONFIGS / "examples").glob("*8gpu.yaml"))


def write(tmp_path, text, name="c.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_defaults_are_the_shipped_outcome_config():
    assert load_config(None) == load_config(CONFIGS / "exprl_outcome_tiny.yaml")


@pytest.mark.parametrize("path", TRAINER_CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_loads_and_validates(path):
    cfg = load_config(path)
    assert cfg.name


@pytest.mark.parametrize("path", sorted((CONFIGS / "examples").glob("*8gpu.yaml")), ids=lambda p: p.name)
def test_real_model_examples_split_evenly_over_8_ranks(path):
    cfg = load_config(path)
    per_rank, accum = batch_layout(cfg, world_size=8)
    assert per_rank * cfg.algo.mini_batches * 8 == cfg.rollout.prompts_per_step * cfg.rollout.group_size
    assert accum * cfg.algo.micro_batch_size == per_rank
    ds = deepspeed_config(cfg, cfg.algo.micro_batch_size, accum, world_size=8)
    assert ds["zero_optimization"]["stage"] == 3
    assert ds["bf16"]["enabled"] and not ds["fp16"]["enabled"]


def test_overrides_parse_yaml_values_and_set_nested_keys():
    cfg = load_config(
        None,
        [
            "rollout.group_size=4",
            "algo.dual_clip=null",
            "eval.ks=[1, 2]",
            "optim.lr=3e-5",
            "optim.betas=[0.9, 0.95]",
            "progress=false",
        ],
    )
    assert cfg.rollout.group_size == 4
    assert cfg.algo.dual_clip is None
    assert cfg.eval.ks == [1, 2]
    assert cfg.optim.lr == pytest.approx(3e-5)
    assert cfg.optim.betas == (0.9, 0.95)
    assert cfg.progress is False


def test_yaml_exponent_without_dot_is_a_number(tmp_path):
    # PyYAML reads "1e-5" as a string; a config must still mean the number
    cfg = load_config(write(tmp_path, "optim:\n  lr: 1e-5\n"))
    assert cfg.optim.lr == pytest.approx(1e-5)


def test_unknown_key_names_key_and_file(tmp_path):
    path = write(tmp_path, "rollout:\n  group_sise: 4\n")
    with pytest.raises(ValueError, match=r"c\.yaml.*rollout\.group_sise"):
        load_config(path)


def test_wrong_type_names_key_and_file(tmp_path):
    path = write(tmp_path, "algo:\n  ppo_epochs: two\n")
    with pytest.raises(ValueError, match=r"c\.yaml: algo\.ppo_epochs: expected an integer"):
        load_config(path)


def test_bad_override_names_key():
    with pytest.raises(ValueError, match=r"override: rollout\.top_p: expected a number"):
        load_config(None, ["rollout.top_p=high"])
    with pytest.raises(ValueError, match=r"unknown key 'rollout\.nope'"):
        load_config(None, ["rollout.nope=1"])
    with pytest.raises(ValueError, match="key=value"):
        load_config(None, ["rollout.group_size"])


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("rollout:\n  temperature: 0\n", "rollout.temperature"),
        ("algo:\n  advantage: vtrace\n", "algo.advantage"),
        ("algo:\n  advantage: process-delta\n", "algo.advantage"),  # needs reward.mode: process
        ("reward:\n  mode: process\n", "reward.mode"),  # process scores with the grpo advantage
        ("reward:\n  name: exact\n  mode: process\n", "reward.mode"),  # verifiers grade answers only
        ("reward:\n  name: oracle\n", "reward.name"),
        ("reward:\n  options: {url: x}\n", "reward.options.url"),
        ("algo:\n  dual_clip: 0.5\n", "algo.dual_clip"),
        ("algo:\n  loss_agg: token-sum\n", "algo.loss_agg"),
        ("algo:\n  kl_estimator: k4\n", "algo.kl_estimator"),
        ("algo:\n  loss_backend: cuda\n", "algo.loss_backend"),
        ("eval:\n  ks: [1, 16]\n", "eval.ks"),
        ("steps: 0\n", "steps"),
        ("deepspeed:\n  config: /nonexistent/ds.json\n", "deepspeed.config"),
        ("algo:\n  clip_low: 1.5\n", "algo.clip_low: must be in \\[0, 1\\] \\(1 = no lower clip\\), got 1.5"),
        ("rollout:\n  group_size: 1\nalgo:\n  micro_batch_size: 4\n", "rollout.group_size: grpo normalises"),
        (
            "reward:\n  name: http\n  options: {model: m}\n",
            "reward.options.base_url: required by reward 'http'",
        ),
        ("reward:\n  sparse: python\n", "reward.sparse: 'python' needs options \\(path\\)"),
        ("algo:\n  clip_high: -0.1\n", "algo.clip_high: must be >= 0"),
        ("name: ..\n", "name: must be a plain directory name"),
        ("name: .\n", "name: must be a plain directory name"),
        ("name: a/b\n", "name: must be a plain directory name"),
        ("algo:\n  micro_batch_size: 7\n", "each rank holds 64 rollouts per step"),
        ("model: tiny\n", "model"),
        ("- a\n- b\n", "top level"),
    ],
)
def test_invalid_values_name_key_and_file(tmp_path, text, key):
    with pytest.raises(ValueError, match=rf"c\.yaml.*{key}"):
        load_config(write(tmp_path, text))


def test_missing_config_file():
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_config("nope.yaml")


def test_saved_config_loads_back_equal(tmp_path):
    cfg = load_config(CONFIGS / "exprl_process_tiny.yaml", ["rollout.group_size=4"])
    save_config(cfg, tmp_path / "saved.yaml")
    assert load_config(tmp_path / "saved.yaml") == cfg


def test_one_sample_per_prompt_is_fine_for_estimators_without_groups():
    cfg = load_config(
        None,
        [
            "reward.mode=process",
            "algo.advantage=process-delta",
            "rollout.group_size=1",
            "algo.micro_batch_size=8",
        ],
    )
    assert cfg.rollout.group_size == 1


def test_values_from_overrides_are_named_as_overrides(tmp_path):
    with pytest.raises(ValueError, match=r"^override: algo.clip_low: must be in \[0, 1\]"):
        load_config(write(tmp_path, "steps: 3\n"), ["algo.clip_low=-1.5"])
    with pytest.raises(ValueError, match=r"^override: algo.clip_low: must be in \[0, 1\]"):
        load_config(write(tmp_path, "steps: 3\n"), ["algo.clip_low=1.5"])
    # exactly 1: no lower clip (the published Stage II's symmetric epsilon 4)
    assert load_config(write(tmp_path, "steps: 3\n"), ["algo.clip_low=1"]).algo.clip_low == 1.0


def test_the_launchers_world_size_is_checked_when_the_config_loads(tmp_path, monkeypatch):
    path = write(tmp_path, "rollout:\n  prompts_per_step: 6\n")
    load_config(path)
    monkeypatch.setenv("WORLD_SIZE", "4")
    with pytest.raises(
        ValueError, match=r"c\.yaml: rollout.prompts_per_step=6 must be a multiple of the world size 4"
    ):
        load_config(path)


def test_batch_layout_rejects_uneven_splits():
    cfg = load_config(None, ["rollout.prompts_per_step=6", "rollout.group_size=4", "algo.micro_batch_size=8"])
    assert batch_layout(cfg, 1) == (24, 3)
    with pytest.raises(ValueError, match="prompts_per_step=6 must be a multiple of the world size 4"):
        batch_layout(cfg, 4)
    with pytest.raises(ValueError, match="multiple of algo.mini_batches"):
        batch_layout(load_config(None, ["algo.micro_batch_size=7"]), 1)


def test_derived_deepspeed_config_is_zero3_with_torch_adam_on_cpu():
    cfg = load_config(None, ["optim.lr=2e-4", "optim.grad_clip=0.5", "optim.warmup_steps=5"])
    ds = deepspeed_config(cfg, micro_batch_size=4, grad_accum=3, world_size=2)
    assert ds["zero_optimization"]["stage"] == 3
    assert ds["train_batch_size"] == 4 * 3 * 2
    assert ds["optimizer"]["params"]["torch_adam"] is True
    assert ds["optimizer"]["params"]["lr"] == pytest.approx(2e-4)
    assert ds["gradient_clipping"] == 0.5
    assert ds["scheduler"]["params"]["warmup_num_steps"] == 5
    if not torch.cuda.is_available():
        assert not ds["bf16"]["enabled"]  # CPU trains in fp32
    frozen = deepspeed_config(cfg, 4, 3, 2, with_optimizer=False)
    assert "optimizer" not in frozen and frozen["zero_optimization"]["stage"] == 3


def test_user_deepspeed_json_is_used_and_must_be_zero3(tmp_path):
    good = tmp_path / "ds.json"
    good.write_text(json.dumps({"zero_optimization": {"stage": 3, "reduce_bucket_size": 123}}))
    cfg = load_config(None, [f"deepspeed.config={good}"])
    ds = deepspeed_config(cfg, 2, 1, 1)
    assert ds["zero_optimization"]["reduce_bucket_size"] == 123 and ds["train_batch_size"] == 2
    bad = tmp_path / "ds2.json"
    bad.write_text(json.dumps({"zero_optimization": {"stage": 2}}))
    with pytest.raises(ValueError, match="ds2.json: zero_optimization.stage must be 3"):
        deepspeed_config(load_config(None, [f"deepspeed.config={bad}"]), 2, 1, 1)
