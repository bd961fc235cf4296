"""Test-session environment: on a machine without CUDA, Triton kernels run in the interpreter on CPU
tensors and DeepSpeed uses its CPU accelerator. Both must be set before triton/deepspeed import."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
