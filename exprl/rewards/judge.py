"""What every judge shares: modes, the 1-5 grade scale, and the model judges' prompt -> grade pipeline."""

from __future__ import annotations

from collections.abc import Sequence

from exprl.data import SEGMENT_DELIMITER
from exprl.rewards.base import Rollout
from exprl.rewards.prompts import Messages, check_context, outcome_messages, parse_score, process_messages
from exprl.rewards.segments import split_segments

MODES = ("outcome", "process")
EMPTY_RESPONSE_GRADE = 1  # an empty response reaches nothing
EMPTY_SEGMENT_GRADE = 2  # an empty step: no progress, but better than contradicting the reference


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    return mode


def grade_to_reward(grade: int) -> float:
    """A 1-5 grade k as a reward in [0, 1]: (k - 1) / 4."""
    if not 1 <= grade <= 5:
        raise ValueError(f"grade must be in 1..5, got {grade}")
    return (grade - 1) / 4


class Judge:
    """What judges share: `mode` "outcome" (granularity "response") or "process" ("segment", split at
    `delimiter`), what a process grade sees (`process_context`: "segment" alone, as published, or
    "prefix": with the segments before it), and a `counters` dict."""

    name = "judge"

    def __init__(
        self, mode: str = "outcome", delimiter: str = SEGMENT_DELIMITER, process_context: str = "segment"
    ) -> None:
        self.mode = check_mode(mode)
        split_segments("", delimiter)  # validates the delimiter
        self.delimiter = delimiter
        self.process_context = check_context(process_context)
        self.granularity = "response" if mode == "outcome" else "segment"
        self.counters: dict[str, int] = {}


class ModelJudge(Judge):
    """A judge backed by a language model: builds one prompt per response (outcome) or per non-empty
    segment (process), asks `complete` for all of them at once, parses each final "Score: k".

    Empty responses and segments get EMPTY_RESPONSE_GRADE / EMPTY_SEGMENT_GRADE without a model call.
    A missing completion (the backend counts why) or an unparsable one (counters["unparsed"]) leaves
    the rollout ungraded: None, counted in counters["ungraded"]; in process mode one missing segment
    grade is enough.
    Subclasses implement `complete(conversations) -> list[str | None]`.
    """

    name = "model"
    # "ungraded" totals the rollouts that a cause (unparsed, a backend failure) left without a grade
    informational_counters: tuple[str, ...] = ("requests", "ungraded")

    def __init__(
        self, mode: str = "outcome", delimiter: str = SEGMENT_DELIMITER, process_context: str = "segment"
    ) -> None:
        super().__init__(mode, delimiter, process_context)
        self.counters.update({"requests": 0, "unparsed": 0, "ungraded": 0})
        self.first_failure: str | None = None

    def complete(self, conversations: Sequence[Messages]) -> list[str | None]:
        raise NotImplementedError

    def _requests(self, rollout: Rollout) -> list[Messages | int]:
        """One entry per grade to give: the messages to send, or a fixed grade for empty text."""
        if self.mode == "outcome":
            if not rollout.response.strip():
                return [EMPTY_RESPONSE_GRADE]
            return [outcome_messages(rollout.problem, rollout.response, self.delimiter)]
        segments = split_segments(rollout.response, self.delimiter)
        return [
            process_messages(rollout.problem, segments[:t], step, self.delimiter, self.process_context)
            if step
            else EMPTY_SEGMENT_GRADE
            for t, step in enumerate(segments)
        ]

    def score(self, batch: Sequence[Rollout]) -> list[float | list[float] | None]:
        per_rollout = [self._requests(rollout) for rollout in batch]
        conversations = [r for requests in per_rollout for r in requests if not isinstance(r, int)]
        self.counters["requests"] += len(conversations)
        completions = self.complete(conversations)
        if len(completions) != len(conversations):
            raise RuntimeError(
                f"{type(self).__name__}.complete returned {len(completions)} outputs "
                f"for {len(conversations)} prompts"
            )
        outputs = iter(completions)
        scores = []
        for requests in per_rollout:
            grades = []
            for request in requests:
                if isinstance(request, int):
                    grades.append(request)
                    continue
                output = next(outputs)
                grade = None if output is None else parse_score(output)
                if output is not None and grade is None:
                    self.counters["unparsed"] += 1
                    self.first_failure = (
                        self.first_failure or f"no 'Score: k' in the judge's output {output[:200]!r}"
                    )
                grades.append(grade)
            if None in grades:
                self.counters["ungraded"] += 1
                scores.append(None)
            elif self.mode == "outcome":
                scores.append(grade_to_reward(grades[0]))
            else:
                scores.append([grade_to_reward(k) for k in grades])
        return scores
