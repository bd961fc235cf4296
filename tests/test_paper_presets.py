"""configs/paper/: the official 4B runs' settings (docs/design.md §1), and tiny twins that differ from them
only in scale (model, data, judge backend, lengths, batch split, learning rate, schedule, evaluation)."""

import pathlib

import pytest

from exprl.models import PAPER_SYSTEM_PROMPT
from exprl.train.config import batch_layout, load_config, to_dict

PAPER = pathlib.Path(__file__).resolve().parent.parent / "configs" / "paper"
STAGE1 = ("stage1_outcome", "stage1_process", "stage1_grpo")
PRESETS = (*STAGE1, "self_distill", "stage2")

# what each 4B preset must say, flattened "section.key": value, written from the official scripts
PUBLISHED = {
    "stage1_outcome": {
        "rollout.group_size": 10,
        "algo.clip_high": 0.28,
        "algo.advantage": "grpo",
        "reward.mode": "outcome",
        "reward.name": "hf",
        "reward.judge_model": "reference",
    },
    "stage1_process": {
        "rollout.group_size": 16,
        "algo.clip_high": 0.26,
        "algo.advantage": "process-delta",
        "reward.mode": "process",
        "reward.process_context": "segment",
        "reward.name": "hf",
        "reward.judge_model": "reference",
    },
    "stage1_grpo": {
        "rollout.group_size": 16,
        "algo.clip_high": 0.26,
        "algo.advantage": "grpo",
        "reward.name": "math",
    },
    "self_distill": {
        "method": "distill",
        "rollout.group_size": 16,
        "rollout.temperature": 0.8,
        "algo.clip_low": 0.2,
        "algo.clip_high": 0.26,
        "algo.kl_coef": 0.0,
        "algo.entropy_coef": 0.0,
        "optim.lr": 1e-7,
        "optim.weight_decay": 0.01,
    },
    "stage2": {
        "rollout.group_size": 32,
        "algo.scale": "none",
        "algo.kl_coef": 0.0,
        "algo.entropy_coef": 1e-4,
        "algo.clip_low": 1.0,  # epsilon 4 below: no lower clip
        "algo.clip_high": 4.0,
        "algo.dual_clip": None,
        "algo.loss_agg": "seq-mean-token-sum",
        "optim.grad_clip": 0.3,
        "reward.truncation": "keep",
        "reward.name": "math",
        "rollout.temperature": 0.8,
        "optim.lr": 1e-6,
        "optim.weight_decay": 0.01,
    },
}
EVERY_STAGE1 = {
    "algo.entropy_coef": 0.0,
    "rollout.temperature": 0.8,
    "algo.dual_clip": 3.0,
    "algo.kl_coef": 1e-3,
    "algo.kl_estimator": "k3",
    "algo.clip_low": 0.2,
    "optim.lr": 1e-6,
    "optim.weight_decay": 0.01,
    "reward.truncation": "zero",
    "algo.loss_agg": "token-mean",
}
# the keys a tiny twin may set differently from its 4B preset
SCALE = {
    "name",
    "steps",
    "checkpoint_every",
    "model",
    "data",
    "reward.name",
    "reward.options",
    "reward.judge_model",
    "reward.sparse",
    "rollout.prompts_per_step",
    "rollout.max_new_tokens",
    "rollout.system_prompt",
    "algo.mini_batches",
    "algo.micro_batch_size",
    "optim.lr",
    "eval",
}
WORLD = {
    "stage1_outcome": 4,
    "stage1_process": 4,
    "stage1_grpo": 8,
    "self_distill": 8,
    "stage2": 8,
}  # the launch lines'


def flat(cfg) -> dict:
    out = {}
    for section, value in to_dict(cfg).items():
        if isinstance(value, dict) and section not in {"model", "data", "eval"}:
            out.update({f"{section}.{k}": v for k, v in value.items()})
        else:
            out[section] = value
    return out


@pytest.mark.parametrize("preset", PRESETS)
def test_4b_preset_has_the_published_settings(preset):
    cfg = load_config(PAPER / f"qwen3_4b_{preset}.yaml")
    got = flat(cfg)
    expected = {**(EVERY_STAGE1 if preset in STAGE1 else {}), **PUBLISHED[preset]}
    assert {k: got[k] for k in expected} == pytest.approx(expected)
    assert cfg.rollout.system_prompt == PAPER_SYSTEM_PROMPT
    assert cfg.rollout.max_new_tokens == 16384
    batch_layout(cfg, WORLD[preset])  # the global batch splits over the launch line's GPUs


@pytest.mark.parametrize("preset", PRESETS)
def test_tiny_twin_differs_only_in_scale(preset):
    big = flat(load_config(PAPER / f"qwen3_4b_{preset}.yaml"))
    tiny_cfg = load_config(PAPER / f"tiny_{preset}.yaml")
    tiny = flat(tiny_cfg)
    differ = {k for k in big if big[k] != tiny[k]}
    assert differ <= SCALE, differ - SCALE
    assert tiny_cfg.model.path == "tiny" and tiny_cfg.rollout.system_prompt is None
    assert tiny_cfg.data.train.startswith("builtin:")
    if big["reward.name"] == "hf":
        assert tiny["reward.name"] == "rubric"  # the programmatic judge on the same scale
    batch_layout(tiny_cfg, 1)


def test_every_paper_file_is_checked():
    names = {p.name for p in PAPER.glob("*.yaml")}
    assert names == {f"{size}_{preset}.yaml" for size in ("qwen3_4b", "tiny") for preset in PRESETS}
