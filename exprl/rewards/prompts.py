"""The judge prompts (outcome and process) and the parser of their final "Score: k" line.

The judge sees the problem, the hidden reference solution and the policy's reasoning. It is told to
compare, never to solve the problem itself, and to end with "Score: k" (k in 1..5).
"""

from __future__ import annotations

import re

Messages = list[dict[str, str]]

SYSTEM = (
    "You are a strict grader of reasoning. You compare a student's reasoning with a reference solution "
    "that the student never saw. Do not solve the problem yourself and do not trust the student's "
    "arithmetic: take every correct result from the reference. Be brief. Your last line must be "
    '"Score: k" with k an integer from 1 to 5.'
)

OUTCOME = """Problem:
{problem}

Reference solution (steps separated by "{delimiter}"):
{reference}

Reference final answer: {answer}

Student's reasoning:
{response}

How surely does the student's reasoning lead to the reference's result?
5 = it reaches the reference's final answer through correct steps.
4 = it establishes most of the reference's key results and nothing contradicts the reference.
3 = it establishes some key results and nothing contradicts the reference.
2 = it establishes little, or it contradicts a key result of the reference.
1 = it is empty, irrelevant, or its final answer differs from the reference's.
First list the reference's key results the student establishes or contradicts, then end with "Score: k"."""

PROCESS = """Problem:
{problem}

Reference solution (steps separated by "{delimiter}"):
{reference}

Reference final answer: {answer}

Student's earlier steps:
{previous}

Student's current step:
{step}

First extract the reference's key checkpoints (its intermediate results and final answer). Then judge
only the current step against them:
5 = it establishes a checkpoint (states a reference result correctly).
4 = it supports a checkpoint (a correct step that leads towards one, or restates one).
3 = it is irrelevant to the checkpoints but contradicts none.
2 = it is unclear or unsupported.
1 = it contradicts a checkpoint (a result or answer that differs from the reference's).
End with "Score: k"."""

_SCORE = re.compile(r"score\s*[:=]\s*\**\s*(\d+(?:\.\d+)?)\s*\**\s*(?:/\s*5)?", re.IGNORECASE)


def outcome_messages(problem, response: str, delimiter: str) -> Messages:
    """Chat messages asking for one grade of the whole `response` (problem: exprl.data.Problem)."""
    user = OUTCOME.format(
        problem=problem.prompt.strip(),
        reference=problem.reference.strip() or "(none)",
        delimiter=delimiter,
        answer=problem.answer,
        response=response.strip(),
    )
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


def process_messages(problem, previous: list[str], step: str, delimiter: str) -> Messages:
    """Chat messages asking for the grade of `step` given the response's `previous` segments."""
    user = PROCESS.format(
        problem=problem.prompt.strip(),
        reference=problem.reference.strip() or "(none)",
        delimiter=delimiter,
        answer=problem.answer,
        previous="\n".join(previous) or "(none)",
        step=step,
    )
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


def render_plain(messages: Messages) -> str:
    """One prompt string for a model without a chat template; the judge continues after "Grader:"."""
    parts = [message["content"] for message in messages]
    return "\n\n".join(parts) + "\n\nGrader:"


def parse_score(output: str) -> int | None:
    """The k of the last "Score: k" in a judge's output (also "Score: **4**", "score = 4/5"); None when
    there is none or k is not an integer in 1..5."""
    matches = _SCORE.findall(output)
    if not matches:
        return None
    value = float(matches[-1])
    return int(value) if value.is_integer() and 1 <= value <= 5 else None
