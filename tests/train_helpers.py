"""Shared helpers of the trainer tests: a tiny random Llama with the task tokenizer, and configs."""

from __future__ import annotations

import pathlib

import torch

from exprl.train.config import TrainConfig, load_config


def make_tiny_model(
    path: pathlib.Path,
    seed: int = 0,
    layers: int = 2,
    hidden: int = 32,
    digits_stop: bool = False,
    tied: bool = True,
) -> pathlib.Path:
    """A randomly initialised Llama (about 30k parameters) with the data stream's tokenizer; `tied`: its
    lm_head is the input embedding (else a weight of its own).

    digits_stop=True makes every digit an end-of-sequence token of the generation config, so a random
    policy ends most responses early (at its first digit): the toy task of `DIGIT_REWARD` learns from that.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    from exprl.models.tokenizer import build_tokenizer

    tokenizer = build_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=256,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        tie_word_embeddings=tied,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    if digits_stop:
        digits = tokenizer.convert_tokens_to_ids(list("0123456789"))
        model.generation_config.eos_token_id = [tokenizer.eos_token_id, *digits]
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def tiny_config(model_path: pathlib.Path, out: pathlib.Path, *overrides: str) -> TrainConfig:
    """A seconds-long RL config on `model_path`, writing under `out`."""
    return load_config(
        None,
        [
            f"model.path={model_path}",
            f"output_dir={out}",
            "name=t",
            "steps=2",
            "progress=false",
            "data.train=builtin:all:1:train:16",
            "rollout.prompts_per_step=2",
            "rollout.group_size=4",
            "rollout.max_new_tokens=12",
            "algo.micro_batch_size=4",
            "optim.lr=1e-3",
            "eval.enabled=false",
            "export=false",
            *overrides,
        ],
    )


# The toy reward: the digit a response stops at, over 9 (0 when it stops otherwise). A random policy
# earns about 0.4; raising it means learning which digit to stop at, which a few steps do for sure.
DIGIT_REWARD = """
def stop_digit(problem, response):
    text = response.strip()
    return int(text[-1]) / 9 if text and text[-1].isdigit() else 0.0
"""


def read_records(run_dir: pathlib.Path) -> list[dict]:
    import json

    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def toy_overrides(reward_file: pathlib.Path) -> list[str]:
    """The stop-digit toy task as GRPO on a digits_stop model (see DIGIT_REWARD)."""
    return [
        "reward.name=python",
        f"reward.options={{path: '{reward_file}:stop_digit'}}",
        "rollout.prompts_per_step=4",
        "rollout.group_size=8",
        "rollout.max_new_tokens=24",
        "algo.micro_batch_size=8",
        "optim.lr=2e-2",
    ]
