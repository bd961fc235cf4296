"""The judge prompts (outcome and process) and the parser of their final "Score: k" line.

The judge sees the problem, the hidden reference solution and the policy's reasoning (outcome: all of it;
process: one segment, alone by default as in the published method, or with the segments before it). It is
told to compare, never to solve the problem itself, and to end with "Score: k" (k in 1..5). The outcome
scale gives partial credit to a trace whose final answer is wrong but whose path follows the reference.
"""

from __future__ import annotations

import re

Messages = list[dict[str, str]]

CONTEXTS = ("segment", "prefix")  # what the process judge sees besides the graded step

SYSTEM = (
    "You grade a student's reasoning against a reference solution that the student never saw. Compare; "
    "do not solve the problem yourself, do not fill in steps the student did not write, and take every "
    "correct result from the reference rather than from the student. Keep your analysis short. Your last "
    'line must be "Score: k" with k an integer from 1 to 5.'
)

OUTCOME = """Problem:
{problem}

Reference solution (steps separated by "{delimiter}"):
{reference}

Reference final answer: {answer}

Student's reasoning:
{response}

Rate how likely it is that this reasoning, followed to its end, yields the reference's result. The \
student's own final answer may be missing or wrong; grade the path, not only the answer.
5 = the reasoning is correct and sufficient: it reaches the reference's result with no gap.
4 = the reasoning is correct and nearly complete: one small step is missing, or the last step slips.
3 = the reasoning is on the right track: it establishes some of the reference's intermediate results \
but is incomplete or has minor errors.
2 = the reasoning has little to do with the reference: vague, mostly irrelevant, or a large gap.
1 = the reasoning contradicts the reference: it commits to results that conflict with it, or says nothing.
Name the reference results the reasoning reaches or contradicts, then end with "Score: k"."""

_CHECKPOINTS = """First list the reference's key checkpoints: the intermediate results it needs, and its final
answer. Then grade the student's step by what it does for those checkpoints:
5 = it establishes a checkpoint (states one of the reference's results correctly).
4 = it supports a checkpoint (a correct move towards one, or a checkpoint's value reached another way).
3 = it is weak or generic: plausible, but tied to no checkpoint.
2 = it is mostly irrelevant, or too unclear to connect to the reference.
1 = it contradicts a checkpoint (a result or answer that differs from the reference's).
End with "Score: k"."""

PROCESS_SEGMENT = (
    """Problem:
{problem}

Reference solution (steps separated by "{delimiter}"):
{reference}

Reference final answer: {answer}

One step of the student's reasoning (the steps before it are NOT shown; grade this step as written and \
do not guess what came earlier):
{step}

"""
    + _CHECKPOINTS
)

PROCESS_PREFIX = (
    """Problem:
{problem}

Reference solution (steps separated by "{delimiter}"):
{reference}

Reference final answer: {answer}

Student's earlier steps (context only, do not grade them):
{previous}

Student's current step, the one to grade:
{step}

"""
    + _CHECKPOINTS
)

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


def check_context(context: str) -> str:
    if context not in CONTEXTS:
        raise ValueError(f"process_context must be one of {CONTEXTS}, got {context!r}")
    return context


def process_messages(
    problem, previous: list[str], step: str, delimiter: str, context: str = "segment"
) -> Messages:
    """Chat messages asking for the grade of `step`; with context "prefix" the judge also sees the
    response's `previous` segments, with "segment" (the published default) it sees the step alone."""
    template = PROCESS_PREFIX if check_context(context) == "prefix" else PROCESS_SEGMENT
    user = template.format(
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
