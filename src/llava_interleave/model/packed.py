"""One forward pass over the new tokens of many sequences at once: decode steps and prompt chunks together.

Continuous batching puts rows of very different lengths in one step: one request decoding its 300th token
next to another prefilling the third chunk of a 12k-token video prompt. Padding them to one rectangle would
spend memory and attention on padding, and every join or leave would move every row's cache. Instead the
new tokens of all rows are packed into one (T, H) sequence: the projections, MLPs and norms run on all T
tokens together (where the work is), and attention runs per row over that row's own keys and values
(`RowCache`), causal within its new tokens. The layer arithmetic is the transformers Qwen2 decoder layer's,
step for step, on its own modules and weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers.models.qwen2.modeling_qwen2 import Qwen2Model

from .kv_cache import RowCache


@dataclass(frozen=True)
class Span:
    """`length` new tokens of one row, at `offset` in the packed sequence; they follow `cache.filled` old ones."""

    cache: RowCache
    offset: int
    length: int


def packed_positions(spans: Sequence[Span], device: torch.device) -> torch.Tensor:
    """(T,) position of every packed token: each row continues from the tokens it already holds."""
    return torch.cat([torch.arange(s.cache.filled, s.cache.filled + s.length) for s in spans]).to(device)


def packed_forward(lm: Qwen2Model, embeds: torch.Tensor, spans: Sequence[Span]) -> torch.Tensor:
    """(T, H) new-token embeddings -> (T, H) final hidden states; writes each row's keys and values into its
    cache and advances it. A failed call leaves every cache's `filled` as it was."""
    hidden = embeds[None]  # (1, T, H)
    cos, sin = lm.rotary_emb(hidden, packed_positions(spans, embeds.device)[None])
    half = cos.shape[-1] // 2  # the two halves of cos and sin are equal (the frequencies are repeated)
    cos, sin = cos[:, None, :, :half], sin[:, None, :, :half]
    masks = [_mask(span.length, span.cache.filled + span.length, embeds.device) for span in spans]
    for index, layer in enumerate(lm.layers):
        attn = layer.self_attn
        residual = hidden
        x = layer.input_layernorm(hidden)
        shape = (1, x.shape[1], -1, attn.head_dim)
        q = attn.q_proj(x).view(shape).transpose(1, 2)  # (1, heads, T, d)
        k = attn.k_proj(x).view(shape).transpose(1, 2)
        v = attn.v_proj(x).view(shape).transpose(1, 2)
        q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
        out = torch.empty_like(q)
        for span, mask in zip(spans, masks):
            cols = slice(span.offset, span.offset + span.length)
            keys, values = span.cache.extend(index, k[0, :, cols], v[0, :, cols])
            out[:, :, cols] = _attend(q[:, :, cols], keys[None], values[None], mask, attn.scaling)
        hidden = residual + attn.o_proj(out.transpose(1, 2).reshape(*x.shape[:2], -1))
        hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
    for span in spans:
        span.cache.advance(span.length)
    return lm.norm(hidden)[0]


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding, as transformers' apply_rotary_pos_emb computes it (x * cos + rotate_half(x) * sin), in
    four fused multiply-adds on half-width cos/sin instead of building rotate_half's negated copy: a third of
    the time of one of the larger non-matmul costs of a long prefill."""
    half = x.shape[-1] // 2
    first, second = x[..., :half], x[..., half:]
    out = torch.empty_like(x)
    torch.mul(first, cos, out=out[..., :half]).addcmul_(second, sin, value=-1)
    torch.mul(second, cos, out=out[..., half:]).addcmul_(first, sin)
    return out


def _mask(new: int, total: int, device: torch.device) -> torch.Tensor | None:
    """Which keys each of `new` queries sees (every earlier key and itself); None where no mask is needed (one
    query sees all keys; a whole prompt at once is plain causal attention)."""
    if new == 1 or new == total:
        return None
    return torch.ones(new, total, dtype=torch.bool, device=device).tril(total - new)


def _attend(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor | None,
            scale: float) -> torch.Tensor:
    """Attention of n new queries over past + new keys."""
    gqa = q.shape[1] != keys.shape[1]
    causal = mask is None and q.shape[2] > 1
    return F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, is_causal=causal, scale=scale, enable_gqa=gqa)
