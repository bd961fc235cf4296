"""The policy's prompt: how a problem is shown to the model, the same in training, evaluation and SFT."""

from __future__ import annotations

from exprl.data import Problem


def prompt_text(problem: Problem, tokenizer, chat_template: str) -> str:
    """The policy's input: the bare problem prompt (never the reference), wrapped in the tokenizer's chat
    template when it has one and `chat_template` is "auto"."""
    if chat_template == "auto" and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": problem.prompt}], tokenize=False, add_generation_prompt=True
        )
    return problem.prompt
