"""Models: the shipped tiny base model, loading any local Hugging Face causal LM, prompts, and sampling."""

import importlib.util
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from exprl.models.prompts import PAPER_SYSTEM_PROMPT, prompt_text, teacher_problem

__all__ = [
    "TINY",
    "default_attn_implementation",
    "load_model_and_tokenizer",
    "PAPER_SYSTEM_PROMPT",
    "prompt_text",
    "resolve_model_path",
    "teacher_problem",
    "tiny_base_path",
]

TINY = "tiny"  # the model path that names the tiny base model shipped in the package


def tiny_base_path() -> Path:
    """Directory of the tiny base model shipped in the package (config, safetensors, tokenizer files)."""
    return Path(__file__).resolve().parent.parent / "assets" / "tiny-base"


def resolve_model_path(path: str | Path, key: str = "path") -> Path:
    """The model directory `path` names: "tiny" is the shipped tiny base model, anything else a local
    Hugging Face model directory. FileNotFoundError naming `key` (the config key or argument) when there
    is no config.json there."""
    if str(path) == TINY:
        shipped = tiny_base_path()
        if not (shipped / "config.json").is_file():
            raise FileNotFoundError(
                f"{key}: {TINY!r} names the shipped tiny model, but {shipped} holds no config.json; "
                "build it with `exprl pretrain` or name a local Hugging Face model directory"
            )
        return shipped
    resolved = Path(path).expanduser()
    if not (resolved / "config.json").is_file():
        raise FileNotFoundError(
            f"{key}: {str(path)!r} is not a local Hugging Face model directory (no config.json there)"
        )
    return resolved


def default_attn_implementation(device: torch.device | str | None = None) -> str:
    """ "flash_attention_2" when flash-attn is importable and the device is CUDA, else "sdpa"."""
    on_cuda = torch.device(device).type == "cuda" if device is not None else torch.cuda.is_available()
    return "flash_attention_2" if on_cuda and importlib.util.find_spec("flash_attn") else "sdpa"


def load_model_and_tokenizer(
    path: str | Path,
    dtype: torch.dtype = torch.float32,
    attn_implementation: str | None = None,
    *,
    key: str = "path",
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer from `path` ("tiny" or a local directory; never the network).

    The model is returned on CPU in eval mode; a tokenizer without a pad token gets its eos token as pad.
    ``attn_implementation=None`` picks ``default_attn_implementation()``. `key` names `path` in errors.
    """
    path = resolve_model_path(path, key)
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype must be a torch.dtype, got {type(dtype).__name__}")
    attn = attn_implementation or default_attn_implementation()
    if attn == "flash_attention_2" and dtype == torch.float32:
        attn = "sdpa"  # flash-attn runs only in fp16/bf16
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=dtype, attn_implementation=attn, local_files_only=True
    )
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.eval()
    return model, tokenizer
