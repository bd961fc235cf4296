"""Test-session environment: on a machine without CUDA, Triton kernels run in the interpreter on CPU
tensors and DeepSpeed uses its CPU accelerator. Both must be set before triton/deepspeed import."""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict:
    """Random tiny Llamas with the task tokenizer, built once per session (`train_helpers.make_tiny_model`):
    "plain", "digits" (every digit ends a response, for the stop-digit toy task), "untied" (a one-layer
    "digits" whose lm_head is not tied to the input embeddings) and "reward", the toy task's reward file
    (`train_helpers.DIGIT_REWARD`)."""
    from train_helpers import DIGIT_REWARD, make_tiny_model

    root = tmp_path_factory.mktemp("tiny-models")
    reward_file = root / "stop_digit.py"
    reward_file.write_text(DIGIT_REWARD)
    return {
        "plain": make_tiny_model(root / "plain"),
        "digits": make_tiny_model(root / "digits", digits_stop=True),
        "untied": make_tiny_model(root / "untied", layers=1, digits_stop=True, tied=False),
        "reward": reward_file,
    }
