"""Where `<image>` sits in a user turn: "interleaved" (as written) or "in-the-front" (all of the turn's
visuals first, then its text). The paper mixes both during training so the model handles either;
`mix_placement` applies the in-the-front form to a seeded fraction of samples.
"""

from __future__ import annotations

import random

from .sample import Sample, Text, Turn, Visual


def in_the_front(sample: Sample) -> Sample:
    """Each user turn's visuals moved before its text; text pieces keep their order, joined by nothing."""
    turns = []
    for turn in sample.turns:
        if turn.role != "user" or not turn.visuals:
            turns.append(turn)
            continue
        text = "".join(s.text for s in turn.segments if isinstance(s, Text)).strip()
        visuals: tuple[Visual, ...] = turn.visuals
        turns.append(Turn(turn.role, (*visuals, Text(text)) if text else visuals))
    return Sample(tuple(turns), sample.id)


def mix_placement(sample: Sample, rng: random.Random, front_fraction: float = 0.5) -> Sample:
    """The sample as written, or in the in-the-front form with probability `front_fraction`."""
    return in_the_front(sample) if rng.random() < front_fraction else sample
