"""How a request's next token is picked: the one set of sampling settings, and the draw for each row.

Every row of a batch is picked by its own settings; a seeded row draws from its own generator, so its
answer is the one it gets alone (greedy rows draw nothing)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..errors import SamplingError

MAX_SEED = 2**63 - 1  # torch.Generator.manual_seed takes a 64-bit integer


@dataclass(frozen=True, kw_only=True)
class SamplingConfig:
    """How to pick the answer's tokens; the one set of defaults (greedy, 256 tokens) for the API, CLI,
    server and eval. `stop_token_ids` are added to the model's own stop tokens."""

    max_new_tokens: int = 256
    temperature: float = 0.0  # 0 -> greedy
    top_p: float = 1.0
    seed: int | None = None
    stop_token_ids: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        problems = []
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            problems.append(f"max_new_tokens must be a whole number of at least 1, got {self.max_new_tokens!r}")
        if not (isinstance(self.temperature, (int, float)) and math.isfinite(self.temperature) and self.temperature >= 0):
            problems.append(f"temperature must be a finite number >= 0 (0 = greedy), got {self.temperature!r}")
        if not (isinstance(self.top_p, (int, float)) and 0 < self.top_p <= 1):
            problems.append(f"top_p must be in (0, 1], got {self.top_p!r}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)
                                      or not 0 <= self.seed <= MAX_SEED):
            problems.append(f"seed must be a whole number in 0..{MAX_SEED}, got {self.seed!r}")
        if problems:
            raise SamplingError("; ".join(problems))

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0


def generator(sampling: SamplingConfig, device: torch.device) -> torch.Generator | None:
    """A seeded generator per request; greedy decoding draws nothing, so it gets none."""
    if sampling.seed is None or sampling.greedy:
        return None
    return torch.Generator(device=device).manual_seed(sampling.seed)


def pick(logits: torch.Tensor, rows: Sequence[tuple[SamplingConfig, torch.Generator | None]]) -> torch.Tensor:
    """(R, V) logits -> (R,) tokens, each row by its own (settings, generator)."""
    tokens = logits.argmax(-1)
    for row, (sampling, rng) in enumerate(rows):
        if sampling.greedy:
            continue
        probs = torch.softmax(logits[row].float() / sampling.temperature, dim=-1)
        if sampling.top_p < 1.0:
            sorted_probs, order = probs.sort(descending=True)
            keep = sorted_probs.cumsum(-1) - sorted_probs < sampling.top_p  # always keeps the top token
            probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs * keep)
        tokens[row] = torch.multinomial(probs, 1, generator=rng)[0]
    return tokens
