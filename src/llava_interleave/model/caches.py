"""Memory-bounded caches shared by every request of one engine: visual tokens and prompt-prefix KV.

- `VisionCache`: the tokens a visual becomes (tower -> projector -> arrange), keyed by `visual_key`:
  a blake2b digest of the preprocessed pixels plus everything that shapes the tokens (modality, crop
  grid, image size, pooling, token count, pixel shape and dtype) and the model's identity (`fingerprint`).
  Cached after `arrange`, because that is what the prompt's slots receive: pooled videos and un-padded
  crops are smaller there, and the arrange work is saved too.
- `PrefixCache`: the keys and values of whole prompts. A new prompt reuses the longest common prefix with
  any entry; positions match on token ids, and image slots match only where the same visual (same
  digest) starts at the same offset, so different images never share keys and values.
Both evict least-recently-used entries beyond their byte budget. `fingerprint` changes when the weights
are changed in place (optimiser steps, `load_state_dict`), which empties both caches.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import zip_longest

import torch
from torch import nn

from .inputs import VisualInput


def fingerprint(model: nn.Module) -> tuple:
    """The model's identity: the object, its dtype and device, and how often its weights were modified."""
    params = list(model.parameters())
    return id(model), params[0].dtype, str(params[0].device), sum(p._version for p in params)


def visual_key(visual: VisualInput) -> tuple:
    """Content digest of the preprocessed pixels plus the settings that shape the visual's tokens."""
    pixels = visual.pixel_values.detach()
    digest = hashlib.blake2b(digest_size=16)
    digest.update(pixels.cpu().contiguous().reshape(-1).view(torch.uint8).numpy().data)
    return (digest.hexdigest(), tuple(pixels.shape), str(pixels.dtype), visual.modality.value, visual.image_size,
            visual.grid, visual.num_tokens, visual.pooling)


def _nbytes(*tensors: torch.Tensor) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


class _LRU:
    """Entries by key, least recently used first, evicted beyond `max_bytes` or `max_entries`."""

    def __init__(self, max_bytes: int, max_entries: int = 1 << 20) -> None:
        self.max_bytes = max_bytes
        self.max_entries = max_entries
        self.entries: OrderedDict = OrderedDict()
        self.sizes: dict = {}
        self.bytes = 0
        self.owner: tuple | None = None
        self.hits = self.misses = 0

    def check_owner(self, owner: tuple) -> None:
        """Forget everything computed by other weights."""
        if owner != self.owner:
            self.clear()
            self.owner = owner

    def clear(self) -> None:
        self.entries.clear()
        self.sizes.clear()
        self.bytes = 0

    def _put(self, key: object, value: object, size: int) -> None:
        if size > self.max_bytes:
            return
        self._drop(key)
        self.entries[key], self.sizes[key] = value, size
        self.bytes += size
        while self.bytes > self.max_bytes or len(self.entries) > self.max_entries:
            self._drop(next(iter(self.entries)))

    def _drop(self, key: object) -> None:
        if key in self.entries:
            del self.entries[key]
            self.bytes -= self.sizes.pop(key)


class VisionCache(_LRU):
    def tokens(self, model: nn.Module, visuals: Sequence[VisualInput], keys: Sequence[tuple]) -> list[torch.Tensor]:
        """The (num_tokens, H) tokens of each visual: cached ones reused, the others encoded together."""
        self.check_owner(fingerprint(model))
        out: list[torch.Tensor | None] = [self.entries.get(k) for k in keys]
        for key, tokens in zip(keys, out):
            if tokens is not None:
                self.entries.move_to_end(key)
        missing = [i for i, tokens in enumerate(out) if tokens is None]
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        encoded = model.encode_visuals([visuals[i] for i in missing]) if missing else []
        for i, tokens in zip(missing, encoded):
            out[i] = tokens
            self._put(keys[i], tokens, _nbytes(tokens))
        return out  # type: ignore[return-value]


@dataclass(frozen=True)
class PromptKey:
    """What a prompt's keys and values depend on: token ids, and each visual's start offset and key."""

    ids: torch.Tensor  # (L,) int64 on the CPU
    visuals: tuple[tuple[int, tuple], ...]  # (start offset, visual_key) in order

    def common_prefix(self, other: PromptKey) -> int:
        """How many leading positions the two prompts share (same tokens, same visuals in the same slots)."""
        n = min(len(self.ids), len(other.ids))
        differ = (self.ids[:n] != other.ids[:n]).nonzero()
        common = int(differ[0]) if len(differ) else n
        for mine, theirs in zip_longest(self.visuals, other.visuals):
            starts = [v[0] for v in (mine, theirs) if v is not None]
            if min(starts) >= common:
                break
            if mine != theirs:
                return min(common, *starts)
        return common


@dataclass
class PrefixEntry:
    key: PromptKey
    keys: list[torch.Tensor]  # per layer (kv_heads, L, head_dim)
    values: list[torch.Tensor]


class PrefixCache(_LRU):
    """Whole prompts' keys and values; at most `max_entries` (256), as every lookup compares with each."""

    def __init__(self, max_bytes: int, max_entries: int = 256) -> None:
        super().__init__(max_bytes, max_entries)

    def lookup(self, key: PromptKey, owner: tuple) -> tuple[int, PrefixEntry | None]:
        """The longest usable cached prefix (at most all but the last token, which must be computed)."""
        self.check_owner(owner)
        best, entry = 0, None
        for candidate in self.entries.values():
            common = min(key.common_prefix(candidate.key), len(key.ids) - 1)
            if common > best:
                best, entry = common, candidate
        if entry is not None:
            self.entries.move_to_end(id(entry))
            self.hits += 1
        else:
            self.misses += 1
        return best, entry

    def store(self, key: PromptKey, tensors: Callable[[], tuple[list[torch.Tensor], list[torch.Tensor]]]) -> None:
        """Keep a prompt's keys and values (`tensors()` copies them out of the batch's cache) unless a longer
        entry already holds them; entries that are prefixes of it are now redundant and dropped."""
        for old in list(self.entries.values()):
            common = key.common_prefix(old.key)
            if common == len(key.ids):  # already covered by a longer entry
                self.entries.move_to_end(id(old))
                return
            if common == len(old.key.ids):
                self._drop(id(old))
        keys, values = tensors()
        entry = PrefixEntry(key, keys, values)
        self._put(id(entry), entry, _nbytes(*keys, *values) + _nbytes(key.ids))
