"""Truncation after image expansion that never cuts through an image's tokens.

"drop": a sample longer than the limit is dropped (returns None).
"trailing_turns": keep the longest run of whole leading turns that fits and still supervises something;
    cutting only at turn ends means a visual's tokens are kept whole or not at all.
"""

from __future__ import annotations

from typing import Literal, get_args

from .batch import Encoded
from .processor import IGNORE_INDEX

TruncationPolicy = Literal["drop", "trailing_turns"]


def truncate(encoded: Encoded, max_length: int, policy: TruncationPolicy) -> Encoded | None:
    """The sample itself when it fits, a shortened copy, or None when nothing trainable fits."""
    if policy not in get_args(TruncationPolicy):
        choices = ", ".join(map(repr, get_args(TruncationPolicy)))
        raise ValueError(f"unknown truncation policy {policy!r}; use one of {choices}")
    if len(encoded) <= max_length:
        return encoded
    cut = max((end for end in encoded.turn_ends if end <= max_length), default=0) if policy == "trailing_turns" else 0
    if all(label == IGNORE_INDEX for label in encoded.labels[:cut]):
        return None
    kept = sum(1 for start in encoded.visual_starts if start < cut)
    return Encoded(
        encoded.input_ids[:cut],
        encoded.labels[:cut],
        encoded.visuals[:kept],
        tuple(end for end in encoded.turn_ends if end <= cut),
        encoded.visual_starts[:kept],
    )
