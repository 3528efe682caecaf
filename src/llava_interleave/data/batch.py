"""One rendered sample as the model consumes it: token ids with visual slots already expanded, and a
`VisualInput` (pixel tensors) per visual."""

from __future__ import annotations

from dataclasses import dataclass

from ..model.inputs import VisualInput


@dataclass(frozen=True)
class Encoded:
    """One rendered, tokenised sample. `labels` use -100 for positions that are not supervised."""

    input_ids: list[int]
    labels: list[int]
    visuals: tuple[VisualInput, ...]
    turn_ends: tuple[int, ...] = ()  # token offsets just after each complete turn
    visual_starts: tuple[int, ...] = ()  # token offset of each visual's first slot

    def __len__(self) -> int:
        return len(self.input_ids)
