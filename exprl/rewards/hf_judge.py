"""The "hf" judge: a local Hugging Face causal LM (by default a frozen copy of the initial policy)
grading with the project's prompts, batched greedy generation."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from exprl.data import SEGMENT_DELIMITER
from exprl.models import load_model_and_tokenizer
from exprl.models.generation import sample
from exprl.rewards.judge import ModelJudge
from exprl.rewards.prompts import Messages, render_plain
from exprl.rewards.registry import register

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@register
class HFJudge(ModelJudge):
    """Judge with a local causal LM: `path` to a checkpoint directory, or an already loaded `model` and
    `tokenizer` (e.g. the trainer's frozen reference policy, to share its memory).

    Prompts use the tokenizer's chat template when it has one, else `render_plain`. A prompt longer
    than `max_prompt_tokens` (default: the model's max_position_embeddings - max_new_tokens) is not
    sent: None, counted in counters["too_long"].
    """

    name = "hf"

    def __init__(
        self,
        path: str | Path | None = None,
        *,
        model=None,
        tokenizer=None,
        mode: str = "outcome",
        delimiter: str = SEGMENT_DELIMITER,
        process_context: str = "segment",
        max_new_tokens: int = 256,
        batch_size: int = 8,
        dtype: str = "float32",
        device: str = "cpu",
        max_prompt_tokens: int | None = None,
    ) -> None:
        super().__init__(mode, delimiter, process_context)
        if (path is None) == (model is None) or (model is None) != (tokenizer is None):
            raise ValueError(
                "hf judge needs either path= (a local checkpoint directory) or model= and tokenizer="
            )
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
        for key, value in (("max_new_tokens", max_new_tokens), ("batch_size", batch_size)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{key} must be a positive int, got {value!r}")
        if model is None:
            model, tokenizer = load_model_and_tokenizer(path, dtype=_DTYPES[dtype])
            model.to(device)
        self.model = model.requires_grad_(False)
        self.tokenizer = tokenizer
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        limit = getattr(model.config, "max_position_embeddings", None)
        self.max_prompt_tokens = max_prompt_tokens or (limit - max_new_tokens if limit else None)
        self.counters["too_long"] = 0

    def render(self, messages: Messages) -> str:
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return render_plain(messages)

    def complete(self, conversations: Sequence[Messages]) -> list[str | None]:
        prompts = [self.render(messages) for messages in conversations]
        fits = [
            self.max_prompt_tokens is None or len(self.tokenizer(p)["input_ids"]) <= self.max_prompt_tokens
            for p in prompts
        ]
        self.counters["too_long"] += fits.count(False)
        if not all(fits) and self.first_failure is None:
            self.first_failure = f"a judge prompt is longer than max_prompt_tokens={self.max_prompt_tokens}"
        sendable = [p for p, ok in zip(prompts, fits, strict=True) if ok]
        samples = sample(
            self.model,
            self.tokenizer,
            sendable,
            1,
            max_new_tokens=self.max_new_tokens,
            greedy=True,
            batch_size=self.batch_size,
        )
        texts = iter(s.text for s in samples)
        return [next(texts) if ok else None for ok in fits]
