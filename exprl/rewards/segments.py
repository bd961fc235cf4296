"""Process segments: a response split at the delimiter, and the segment of every response token.

Segment k of a response is the text between the k-th and (k+1)-th delimiter (`str.split` semantics, so a
response with D delimiters has D + 1 segments, some possibly empty). A delimiter belongs to the
segment it closes: in token space, token i is in segment "number of delimiters wholly contained in the
decoded text of the tokens before i".
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where tokens are handled: a reward worker starts without it
    import torch

from exprl.data import SEGMENT_DELIMITER


def _check_delimiter(delimiter: str) -> None:
    if not isinstance(delimiter, str) or not delimiter:
        raise ValueError(f"delimiter must be a non-empty str, got {delimiter!r}")


def split_segments(text: str, delimiter: str = SEGMENT_DELIMITER) -> list[str]:
    """The segments of `text` at `delimiter`, each stripped of surrounding whitespace.

    Always `text.count(delimiter) + 1` segments: "a ### b ###" -> ["a", "b", ""], "" -> [""].
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    _check_delimiter(delimiter)
    return [segment.strip() for segment in text.split(delimiter)]


def token_segment_ids(
    response_ids: torch.Tensor, tokenizer, delimiter: str = SEGMENT_DELIMITER
) -> torch.Tensor:
    """0-based segment index of every response token, consistent with `split_segments`.

    response_ids: LongTensor[R] (no padding). Returns LongTensor[R], non-decreasing, with values in
    [0, D] where D = number of delimiters in `tokenizer.decode(response_ids, skip_special_tokens=True)`
    (the text `split_segments` sees). When the response ends with a delimiter, the last (empty) segment
    has no tokens. Special tokens (e.g. eos) join the segment they follow, and a token that straddles
    the end of a delimiter (e.g. a BPE token "####") joins the segment that delimiter closes.

    Cost: O(D log R) prefix decodes (a binary search per delimiter), not one decode per token.
    """
    import torch

    _check_delimiter(delimiter)
    if not isinstance(response_ids, torch.Tensor) or response_ids.dim() != 1:
        raise ValueError("response_ids must be a 1-D LongTensor")
    if response_ids.dtype != torch.long:
        raise TypeError(f"response_ids must be int64, got {response_ids.dtype}")
    ids = response_ids.tolist()

    def delimiters_before(i: int) -> int:
        return tokenizer.decode(ids[:i], skip_special_tokens=True).count(delimiter)

    segment_ids = torch.zeros(len(ids), dtype=torch.long)
    low = 0
    for k in range(1, delimiters_before(len(ids)) + 1):
        # smallest i whose prefix ids[:i] holds k delimiters: tokens i.. are in segment >= k
        lo, hi = low, len(ids)
        while lo < hi:
            mid = (lo + hi) // 2
            if delimiters_before(mid) >= k:
                hi = mid
            else:
                lo = mid + 1
        segment_ids[lo:] = k
        low = lo
    return segment_ids
