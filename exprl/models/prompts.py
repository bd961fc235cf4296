"""The policy's prompt: how a problem is shown to the model, the same in training, evaluation and SFT."""

from __future__ import annotations

from dataclasses import replace

from exprl.data import Problem

# The published runs' instruction to the policy (our wording): reason step by step, box the answer
PAPER_SYSTEM_PROMPT = "Reason through the problem step by step, then give the final answer in \\boxed{}."


def teacher_problem(problem: Problem) -> Problem:
    """The problem as the self-distillation teacher sees it: the reference solution shown before the
    question (the policy never sees it); the question's own format, e.g. a trailing "A: ", stays last."""
    if not problem.reference:
        raise ValueError(f"problem {problem.id!r} has no reference solution to show a teacher")
    return replace(problem, prompt=f"A worked reference solution:\n{problem.reference}\n\n{problem.prompt}")


def prompt_text(problem: Problem, tokenizer, chat_template: str, system_prompt: str | None = None) -> str:
    """The policy's input: the bare problem prompt (never the reference), wrapped in the tokenizer's chat
    template when it has one and `chat_template` is "auto", with `system_prompt` as a system message
    (a plain prompt without a chat template keeps the task's own format: no system prompt)."""
    if chat_template == "auto" and getattr(tokenizer, "chat_template", None):
        system = [{"role": "system", "content": system_prompt}] if system_prompt else []
        return tokenizer.apply_chat_template(
            [*system, {"role": "user", "content": problem.prompt}], tokenize=False, add_generation_prompt=True
        )
    return problem.prompt
