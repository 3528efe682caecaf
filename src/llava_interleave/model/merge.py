"""Interleaved merge: every image slot in the token sequence receives, in order, one visual token."""

from __future__ import annotations

import torch

from ..errors import PromptError


def merge_visual_tokens(embeds: torch.Tensor, slot_mask: torch.Tensor, visual_tokens: torch.Tensor) -> torch.Tensor:
    """embeds (B, L, H), slot_mask (B, L) bool, visual_tokens (N, H) -> embeds with slots filled row-major.

    Raises:
        PromptError: the number of slots differs from the number of visual tokens.
    """
    check_slots(int(slot_mask.sum()), visual_tokens.shape[0])
    return embeds.masked_scatter(slot_mask.unsqueeze(-1), visual_tokens.to(embeds.dtype))


def check_slots(slots: int, visual_tokens: int) -> None:
    """Raises PromptError unless there is one image slot per visual token."""
    if slots != visual_tokens:
        raise PromptError(f"the prompt has {slots} image-token slots but the visuals give {visual_tokens} tokens")
