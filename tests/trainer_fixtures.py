"""Shared helpers of the trainer tests: a tiny random Llama with the task tokenizer, and configs."""

from __future__ import annotations

import pathlib

import torch

from exprl.train.config import TrainConfig, load_config


def make_tiny_model(path: pathlib.Path, seed: int = 0, layers: int = 2, hidden: int = 32) -> pathlib.Path:
    """A randomly initialised Llama (about 30k parameters) with the data stream's tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from exprl.models.tokenizer import build_tokenizer

    tokenizer = build_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=None,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def tiny_config(model_path: pathlib.Path, out: pathlib.Path, *overrides: str) -> TrainConfig:
    """A seconds-long RL config on `model_path`, writing under `out`."""
    return load_config(None, [
        f"model.path={model_path}", f"output_dir={out}", "name=t", "steps=2", "progress=false",
        "data.train=builtin:all:1:train:16", "rollout.prompts_per_step=2", "rollout.group_size=4",
        "rollout.max_new_tokens=12", "algo.micro_batch_size=4", "optim.lr=1e-3", "eval.enabled=false",
        "export=false", *overrides,
    ])
