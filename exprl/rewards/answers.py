"""Final answers: find them in a response and compare them."""

from __future__ import annotations

import re
from fractions import Fraction

_ANSWER_LINE = re.compile(r"answer\s*:[ \t]*([^\n]*)", re.IGNORECASE)
_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")


def _boxed_contents(text: str) -> list[tuple[int, str]]:
    """(start offset, contents) of every \\boxed{...} with balanced braces; an unclosed box is skipped."""
    found = []
    for match in _BOXED.finditer(text):
        depth, start = 1, match.end()
        for i in range(start, len(text)):
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            if depth == 0:
                found.append((match.start(), text[start:i]))
                break
    return found


def extract_answer(text: str) -> str | None:
    """The response's final answer: the contents of the last `\\boxed{X}` or the rest of the line after
    the last "Answer:" (case-insensitive), whichever comes later in `text`; None when there is neither
    or it is empty. A boxed answer inside an "Answer:" line is unwrapped.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    candidates = [(m.start(), m.group(1)) for m in _ANSWER_LINE.finditer(text)]
    candidates += _boxed_contents(text)
    if not candidates:
        return None
    _, answer = max(candidates, key=lambda c: c[0])
    boxed = _boxed_contents(answer)
    answer = (boxed[-1][1] if boxed else answer).strip()
    return answer or None


def _as_number(text: str) -> Fraction | None:
    try:
        return Fraction(text)
    except (ValueError, ZeroDivisionError):
        return None


def normalize_answer(text: str) -> str:
    """Whitespace collapsed, a trailing period and surrounding `$` dropped: "  6 2. " -> "6 2"."""
    text = " ".join(text.split()).rstrip(".").strip()
    if len(text) >= 2 and text[0] == text[-1] == "$":
        text = text[1:-1].strip()
    return text


def same_answer(predicted: str, expected: str) -> bool:
    """Equal after `normalize_answer`; numbers compare by value ("62.0" == "62", "1/2" == "0.5")."""
    predicted, expected = normalize_answer(predicted), normalize_answer(expected)
    if predicted == expected:
        return True
    a, b = _as_number(predicted.replace(" ", "")), _as_number(expected.replace(" ", ""))
    return a is not None and b is not None and a == b
