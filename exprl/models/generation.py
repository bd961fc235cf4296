"""Batched sampling of G completions per prompt from any Hugging Face causal LM.

Used by the trainer's rollout and by evaluation. Sampling is plain ancestral sampling from
``softmax(logits / temperature)`` (optionally nucleus-truncated by ``top_p``): the model's own
generation defaults (top-k, repetition penalty, ...) are deliberately ignored so the sampling
distribution is the one the RL loss assumes.
"""

from dataclasses import dataclass

import torch
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase


@dataclass
class Sample:
    """One completion of prompt ``prompt_index``.

    ``prompt_ids``: int64 [P], the prompt's tokens without padding. ``response_ids``: int64 [R], the
    generated tokens without padding, ending with the eos token when the model stopped by itself.
    ``text``: the decoded response, special tokens skipped. ``truncated``: stopped at
    ``max_new_tokens`` without emitting eos.
    """

    prompt_index: int
    prompt_ids: torch.Tensor
    response_ids: torch.Tensor
    text: str
    truncated: bool


def _eos_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    eos = getattr(model.generation_config, "eos_token_id", None)
    if eos is None:
        eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("tokenizer: neither it nor the model's generation config defines an eos token")
    return [eos] if isinstance(eos, int) else list(eos)


def _validate(prompts, num_samples, max_new_tokens, temperature, top_p, batch_size) -> None:
    if not isinstance(prompts, list | tuple) or not all(isinstance(p, str) for p in prompts):
        raise TypeError("prompts must be a list of str")
    for name, value in (("num_samples", num_samples), ("max_new_tokens", max_new_tokens)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    bad_batch = isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1
    if batch_size is not None and bad_batch:
        raise ValueError(f"batch_size must be a positive int or None, got {batch_size!r}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p!r}")


@torch.no_grad()
def sample(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    num_samples: int,
    *,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    greedy: bool = False,
    batch_size: int | None = None,
    generator_seed: int | None = None,
) -> list[Sample]:
    """Generate ``num_samples`` completions for each prompt, returned prompt-major
    (all samples of prompt 0, then prompt 1, ...), so sample ``i`` belongs to prompt ``i // num_samples``.

    Rows are generated ``batch_size`` at a time (default: all at once) with left padding. With
    ``generator_seed`` the call is reproducible for the same arguments and does not disturb the
    caller's global RNG state. ``greedy`` ignores ``temperature`` and ``top_p``.
    """
    _validate(prompts, num_samples, max_new_tokens, temperature, top_p, batch_size)
    if not prompts:
        return []
    eos_ids = _eos_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids[0]
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=not greedy,
        temperature=None if greedy else temperature,
        top_p=None if greedy else top_p,
        top_k=None if greedy else 0,
        eos_token_id=eos_ids,
        pad_token_id=pad_id,
    )
    encoded = [torch.tensor(tokenizer(p)["input_ids"], dtype=torch.long) for p in prompts]
    rows = [i for i in range(len(prompts)) for _ in range(num_samples)]
    batch_size = batch_size or len(rows)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    samples: list[Sample] = []
    devices = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices, enabled=generator_seed is not None):
            if generator_seed is not None:
                torch.manual_seed(generator_seed)
            for start in range(0, len(rows), batch_size):
                chunk = rows[start : start + batch_size]
                width = max(len(encoded[i]) for i in chunk)
                input_ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
                attention_mask = torch.zeros((len(chunk), width), dtype=torch.long)
                for r, i in enumerate(chunk):  # left padding: the last prompt token is aligned
                    input_ids[r, width - len(encoded[i]) :] = encoded[i]
                    attention_mask[r, width - len(encoded[i]) :] = 1
                output = model.generate(
                    input_ids=input_ids.to(device),
                    attention_mask=attention_mask.to(device),
                    generation_config=config,
                )
                for r, i in enumerate(chunk):
                    samples.append(_to_sample(i, encoded[i], output[r, width:].cpu(), eos_ids, tokenizer))
    finally:
        model.train(was_training)
    return samples


def _to_sample(
    prompt_index: int,
    prompt_ids: torch.Tensor,
    generated: torch.Tensor,
    eos_ids: list[int],
    tokenizer: PreTrainedTokenizerBase,
) -> Sample:
    """Cut a generated row after its first eos; a row without eos ran out of tokens (it is never padded,
    since generation stops only when every row has finished or the length limit is hit)."""
    is_eos = torch.isin(generated, torch.tensor(eos_ids))
    if is_eos.any():
        response = generated[: int(is_eos.nonzero()[0]) + 1]
        truncated = False
    else:
        response, truncated = generated, True
    text = tokenizer.decode(response.tolist(), skip_special_tokens=True)
    return Sample(prompt_index, prompt_ids, response.clone(), text, truncated)
