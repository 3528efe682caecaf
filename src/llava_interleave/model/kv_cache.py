"""Per-request keys and values, in buffers sized for prompt + answer, so decoding never copies them.

transformers' DynamicCache concatenates every step, copying the whole cache per token: with a 16-frame
prompt (~12k tokens) that copy, not the arithmetic, is most of a decode step. Here every request owns one
buffer per engine (all layers), written in place; requests join and leave a running batch without any
other request's keys and values moving, and the memory a request holds is exactly what it reserved.
"""

from __future__ import annotations

import torch

from ..config import TextConfig


def bytes_per_token(cfg: TextConfig, dtype: torch.dtype) -> int:
    """Keys + values of one token in every layer."""
    head_dim = cfg.hidden_size // cfg.num_heads
    return 2 * cfg.num_layers * cfg.num_kv_heads * head_dim * torch.empty((), dtype=dtype).element_size()


class RowCache:
    """The keys and values of one sequence: (layers, kv_heads, capacity, head_dim), filled up to `filled`."""

    def __init__(self, cfg: TextConfig, capacity: int, dtype: torch.dtype, device: torch.device) -> None:
        head_dim = cfg.hidden_size // cfg.num_heads
        shape = (cfg.num_layers, cfg.num_kv_heads, capacity, head_dim)
        self.keys = torch.empty(shape, dtype=dtype, device=device)
        self.values = torch.empty(shape, dtype=dtype, device=device)
        self.capacity = capacity
        self.filled = 0

    @property
    def nbytes(self) -> int:
        return 2 * self.keys.numel() * self.keys.element_size()

    def preload(self, keys: list[torch.Tensor], values: list[torch.Tensor], length: int) -> None:
        """Start from the first `length` positions of cached (kv_heads, n, head_dim) tensors, one per layer."""
        for layer, (k, v) in enumerate(zip(keys, values)):
            self.keys[layer, :, :length] = k[:, :length]
            self.values[layer, :, :length] = v[:, :length]
        self.filled = length

    def extend(self, layer: int, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write (kv_heads, n, head_dim) new keys and values after the filled part of `layer`; return that
        layer's keys and values up to them. `advance(n)` makes the write count once every layer is written."""
        end = self.filled + keys.shape[1]
        if end > self.capacity:
            raise RuntimeError(f"KV cache full: {end} tokens for a capacity of {self.capacity}")
        self.keys[layer, :, self.filled : end] = keys
        self.values[layer, :, self.filled : end] = values
        return self.keys[layer, :, :end], self.values[layer, :, :end]

    def advance(self, count: int) -> None:
        self.filled += count

    def prefix(self, length: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Copies of the first `length` positions, per layer (what the prefix cache keeps)."""
        return ([k[:, :length].clone() for k in self.keys], [v[:, :length].clone() for v in self.values])
