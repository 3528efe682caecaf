"""LLaVA-NeXT-Interleave: SigLIP tower -> mlp2x_gelu projector -> arrange per visual -> merge -> Qwen2.

The processor has already expanded every `<image>` slot to its exact token count, so the model only
encodes, arranges (anyres un-padding, video pooling, newlines) and scatters into the slots.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from transformers.cache_utils import Cache
from transformers.models.qwen2.modeling_qwen2 import Qwen2Model

from ..config import InterleaveConfig
from .arrange import arrange
from .inputs import VisualInput
from .language_model import build_language_model
from .merge import merge_visual_tokens
from .projector import Projector
from .vision_tower import VisionTower

# transformers 5.2x renamed Qwen2Model's `past_key_values` argument to `cache`; accept both releases.
CACHE_ARGUMENT = "cache" if "cache" in inspect.signature(Qwen2Model.forward).parameters else "past_key_values"


@dataclass
class ForwardOutput:
    logits: torch.Tensor  # (B, L or logits_to_keep, V)
    past_key_values: Cache | None


class LlavaInterleave(nn.Module):
    def __init__(self, config: InterleaveConfig, attn_implementation: str = "sdpa") -> None:
        super().__init__()
        self.config = config
        self.vision_tower = VisionTower(config.vision, attn_implementation)
        self.projector = Projector(config.vision.hidden_size, config.text.hidden_size)
        self.image_newline = nn.Parameter(torch.zeros(config.text.hidden_size)) if config.processor.uses_newline else None
        self.language_model = build_language_model(config.text, attn_implementation)
        self.lm_head = nn.Linear(config.text.hidden_size, config.text.vocab_size, bias=False)
        if config.text.tie_word_embeddings:
            self.lm_head.weight = self.language_model.embed_tokens.weight
        self.vision_batch_size = 64  # crops per tower pass; bounds activation memory for long videos

    @property
    def device(self) -> torch.device:
        return self.lm_head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.lm_head.weight.dtype

    def encode_visuals(self, visuals: Sequence[VisualInput]) -> list[torch.Tensor]:
        """One (num_tokens, H) tensor per visual; all crops and frames go through the tower together."""
        pixels = torch.cat([v.pixel_values for v in visuals]).to(self.device)  # (N, 3, S, S)
        features = torch.cat(
            [self.projector(self.vision_tower(chunk)) for chunk in pixels.split(self.vision_batch_size)]
        )  # (N, 729, H)
        per_visual = features.split([v.pixel_values.shape[0] for v in visuals])
        grid = self.config.vision.grid
        return [arrange(f, v, self.image_newline, grid) for f, v in zip(per_visual, visuals)]

    def embed(self, input_ids: torch.Tensor, visuals: Sequence[VisualInput] = ()) -> torch.Tensor:
        """(B, L) ids with image slots -> (B, L, H) embeddings with the visual tokens merged in."""
        slots = input_ids == self.config.image_token_id
        embeds = self.language_model.embed_tokens(input_ids.masked_fill(slots, 0))
        if not visuals and not slots.any():
            return embeds
        tokens = torch.cat(self.encode_visuals(visuals)) if visuals else embeds.new_zeros(0, embeds.shape[-1])
        return merge_visual_tokens(embeds, slots, tokens)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        visuals: Sequence[VisualInput] = (),
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        logits_to_keep: int = 0,
    ) -> ForwardOutput:
        """Logits for every position, or only the last `logits_to_keep` (saves the vocab matmul in prefill)."""
        if inputs_embeds is None:
            assert input_ids is not None, "give input_ids or inputs_embeds"
            inputs_embeds = self.embed(input_ids.to(self.device), visuals)
        cache = {CACHE_ARGUMENT: past_key_values} if past_key_values is not None else {}
        out = self.language_model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=past_key_values is not None,
            **cache,
        )
        hidden = out.last_hidden_state
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        return ForwardOutput(self.lm_head(hidden), getattr(out, CACHE_ARGUMENT) if past_key_values is not None else None)
