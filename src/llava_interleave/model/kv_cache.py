"""A KV cache written into buffers sized for prompt + answer, so decoding never copies the cache.

transformers' DynamicCache concatenates every step, copying the whole cache per token: with a 16-frame
prompt (~12k tokens) that copy, not the arithmetic, is most of a decode step. Here each layer writes
the new keys and values in place and exposes a view of the filled part.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, DynamicLayer


class PreallocatedLayer(DynamicLayer):
    def __init__(self, capacity: int) -> None:
        super().__init__()
        self.capacity = capacity
        self.filled = 0

    def preload(self, batch: int, start: int, rows: list[tuple[int, int, torch.Tensor, torch.Tensor]]) -> None:
        """Fill columns [0, start) from cached prefixes: for each (row, offset, keys, values) of (heads, n, dim),
        keys[:, :start - offset] go to columns [offset, start); every other column before `start` is left
        padding, zeroed (masked, but must be finite)."""
        first_keys, first_values = rows[0][2], rows[0][3]
        self.lazy_initialization(first_keys[None], first_values[None])
        heads, _, dim = first_keys.shape
        self.key_buffer = first_keys.new_empty(batch, heads, self.capacity, dim)
        self.value_buffer = first_values.new_empty(batch, heads, self.capacity, first_values.shape[-1])
        offsets = dict.fromkeys(range(batch), start)
        for row, offset, keys, values in rows:
            offsets[row] = offset
            self.key_buffer[row, :, offset:start] = keys[:, : start - offset]
            self.value_buffer[row, :, offset:start] = values[:, : start - offset]
        for row, offset in offsets.items():
            self.key_buffer[row, :, :offset].zero_()
            self.value_buffer[row, :, :offset].zero_()
        self.filled = start
        self.keys, self.values = self.key_buffer[:, :, :start], self.value_buffer[:, :, :start]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: object, **kwargs: object) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
            batch, heads, _, dim = key_states.shape
            self.key_buffer = key_states.new_empty(batch, heads, self.capacity, dim)
            self.value_buffer = value_states.new_empty(batch, heads, self.capacity, value_states.shape[-1])
        end = self.filled + key_states.shape[-2]
        if end > self.capacity:
            raise RuntimeError(f"KV cache full: {end} tokens for a capacity of {self.capacity}")
        self.key_buffer[:, :, self.filled : end] = key_states
        self.value_buffer[:, :, self.filled : end] = value_states
        self.filled = end
        self.keys, self.values = self.key_buffer[:, :, :end], self.value_buffer[:, :, :end]
        return self.keys, self.values


def preallocated_cache(num_layers: int, capacity: int) -> Cache:
    """A cache for `capacity` tokens (prompt + new tokens) in every layer."""
    return Cache(layers=[PreallocatedLayer(capacity) for _ in range(num_layers)])
