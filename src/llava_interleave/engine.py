"""Generation engine: continuous batching over per-request KV caches. Knows nothing of text.

Requests are `submit`ted and advanced together by `step()`. Each step admits waiting requests while the
row limit and the KV budget allow, then runs one packed forward pass (model/packed.py) over the next token
of every decoding request and the next prompt chunk (at most `chunk_tokens`) of requests still being
prefilled, and samples each row by its own settings (temperature, top-p, its own seeded generator, stop
ids, token budget). A request leaves the step it stops, and the next one joins the step after: a short
question asked while a long answer streams is answered at once, and a long prompt, cut into chunks (its
visuals encoded as their slots come up), only slows running streams by one chunk per step instead of
stopping them.

KV memory: a request reserves its prompt + answer tokens when admitted (exactly; its buffer never grows or
moves). With a budget (`kv_mb`) a request waits until its reservation fits; one that could never fit is
refused by `submit` (KVBudgetError), so the batch never runs out of memory mid-answer.

With `cache_mb` > 0 two caches (model/caches.py) serve every request: visual tokens by content, and the
keys and values of earlier prompts. A prompt sharing a prefix with an earlier one (the next turn of a chat,
another question about the same images) prefills only the rest.

Batching does not change answers: a prompt is cut into the same chunks alone or in a batch, and attention
runs over each row's own keys only. The matrix products of a packed step still see other rows, so their
last bits may round differently; the greedy tokens are the same alone and batched (tested).
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Iterator, Sequence
from itertools import accumulate
from dataclasses import dataclass, field

import torch

from .data.batch import Encoded
from .errors import InterleaveError, KVBudgetError, PromptError, SamplingError
from .model.caches import PrefixCache, PromptKey, VisionCache, fingerprint, visual_key
from .model.inputs import VisualInput
from .model.kv_cache import RowCache, bytes_per_token
from .model.llava import LlavaInterleave
from .model.merge import check_slots, merge_visual_tokens
from .model.packed import Span, packed_forward
from .model.sampling import MAX_SEED, SamplingConfig, generator, pick

__all__ = ["MAX_SEED", "Engine", "Request", "SamplingConfig"]

log = logging.getLogger("llava_interleave.engine")


@dataclass(eq=False)
class Request:
    """One prompt in the engine. `tokens` grow as it decodes; `finish` is set when it leaves:
    "stop" (a stop id, kept as the last token), "length" (its budget), "cancelled", or "error" (`error`)."""

    prompt: Encoded
    sampling: SamplingConfig
    tokens: list[int] = field(default_factory=list)
    finish: str | None = None
    error: BaseException | None = None
    reserved: int = 0  # bytes of KV memory held
    cache: RowCache | None = field(default=None, repr=False)
    ids: torch.Tensor | None = field(default=None, repr=False)  # the prompt's ids, on the CPU
    visual_keys: list[tuple] = field(default_factory=list, repr=False)  # for the caches
    encoded: dict[int, torch.Tensor] = field(default_factory=dict, repr=False)  # visuals with slots still to fill
    key: PromptKey | None = field(default=None, repr=False)
    generator: torch.Generator | None = field(default=None, repr=False)

    @property
    def reading(self) -> int:
        """Prompt positions not yet in the cache (0 once the prompt is read and the answer is being written)."""
        return max(len(self.prompt) - self.cache.filled, 0) if self.cache is not None else len(self.prompt)


class Engine:
    """`max_rows` requests decode at once; `kv_mb` (0 = unbounded) bounds their keys and values together;
    a step prefills at most `chunk_tokens` prompt tokens; `cache_mb` bounds the vision and prefix caches."""

    def __init__(self, model: LlavaInterleave, cache_mb: float = 0, *, max_rows: int = 16, kv_mb: float = 0,
                 chunk_tokens: int = 2048) -> None:
        self.model = model
        self.vision_cache: VisionCache | None = None
        self.prefix_cache: PrefixCache | None = None
        self.set_cache(cache_mb)
        self.max_rows, self.kv_budget, self.chunk_tokens = 1, 0, 1
        self.configure(max_rows=max_rows, kv_mb=kv_mb, chunk_tokens=chunk_tokens)
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.reserved = 0

    def set_cache(self, cache_mb: float) -> None:
        """Bound the vision and prefix caches by `cache_mb` MiB together (a quarter for visual tokens); 0 = off."""
        total = int(cache_mb * 2**20)
        self.vision_cache = VisionCache(total // 4) if total > 0 else None
        self.prefix_cache = PrefixCache(total - total // 4) if total > 0 else None

    def configure(self, *, max_rows: int | None = None, kv_mb: float | None = None,
                  chunk_tokens: int | None = None) -> None:
        """Scheduling limits (the server sets them from its options)."""
        for name, value in (("max_rows", max_rows), ("chunk_tokens", chunk_tokens)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise SamplingError(f"{name} must be a whole number of at least 1, got {value!r}")
        if kv_mb is not None and not (isinstance(kv_mb, (int, float)) and math.isfinite(kv_mb) and kv_mb >= 0):
            raise SamplingError(f"the KV budget must be a number of MiB >= 0 (0 = unbounded), got {kv_mb!r}")
        self.max_rows = max_rows or self.max_rows
        self.chunk_tokens = chunk_tokens or self.chunk_tokens
        self.kv_budget = int(kv_mb * 2**20) if kv_mb is not None else self.kv_budget

    # ------------------------------------------------------------------ requests
    def submit(self, prompt: Encoded, sampling: SamplingConfig) -> Request:
        """Queue a prompt; it joins the batch at a coming step.

        Raises:
            PromptError: it is empty, or its image slots and visuals disagree.
            KVBudgetError: its keys and values could never fit in the budget, even alone."""
        if not len(prompt):
            raise PromptError("the prompt is empty")
        check_slots(prompt.input_ids.count(self.model.config.image_token_id), sum(v.num_tokens for v in prompt.visuals))
        request = Request(prompt, sampling)
        request.reserved = self._need(request)
        if self.kv_budget and request.reserved > self.kv_budget:
            raise KVBudgetError(f"the prompt ({len(prompt)} tokens) with {sampling.max_new_tokens} answer tokens needs "
                                f"{request.reserved / 2**20:.1f} MiB of keys and values, over the engine's budget of "
                                f"{self.kv_budget / 2**20:.1f} MiB")
        self.waiting.append(request)
        return request

    def cancel(self, request: Request) -> None:
        """Take a request out (its memory is free for the next step); a finished one is left as it is."""
        if request.finish is None:
            request.finish = "cancelled"
        self._release(request)

    @property
    def idle(self) -> bool:
        return not self.waiting and not self.running

    def stats(self) -> dict[str, object]:
        return {"running": len(self.running), "waiting": len(self.waiting), "kv_reserved_mb": self.reserved / 2**20}

    @property
    def kv_tokens(self) -> int | None:
        """How many tokens (prompts + answers of the running requests) the KV budget holds; None: unbounded."""
        return self.kv_budget // self._token_bytes() if self.kv_budget else None

    def _token_bytes(self) -> int:
        return bytes_per_token(self.model.config.text, self.model.dtype)

    def _need(self, request: Request) -> int:
        return (len(request.prompt) + request.sampling.max_new_tokens) * self._token_bytes()

    def _release(self, request: Request) -> None:
        if request in self.running:
            self.running.remove(request)
            self.reserved -= request.reserved
        elif request in self.waiting:
            self.waiting.remove(request)
        request.cache = request.ids = None
        request.encoded = {}

    def _fail(self, request: Request, error: BaseException) -> None:
        """End a request with its error; a fault that is not the input's is logged with its traceback (for the
        operator: the caller gets the error itself, the server's client a message without internals)."""
        if not isinstance(error, InterleaveError):
            log.error("generation failed for one request", exc_info=error)
        request.finish, request.error = "error", error
        self._release(request)

    # ------------------------------------------------------------------ stepping
    @torch.inference_mode()
    def step(self) -> list[tuple[Request, int]]:
        """Admit what fits, run one packed forward pass, sample: the (request, new token) pairs of this step.
        A pass that fails runs again row by row, so a row that breaks the model fails alone ("error")."""
        self._admit()
        rows = self._plan()
        if not rows:
            return []
        try:
            return self._forward(rows)
        except Exception as err:  # a fault of the model or of one row: find the row, keep the others going
            if len(rows) == 1:
                self._fail(rows[0][0], err)
                return []
        produced: list[tuple[Request, int]] = []
        for row in rows:
            try:
                produced += self._forward([row])
            except Exception as err:
                self._fail(row[0], err)
        return produced

    def _admit(self) -> None:
        """Start waiting requests in order while a row is free and their KV reservation fits."""
        while self.waiting and len(self.running) < self.max_rows:
            request = self.waiting[0]
            if self.kv_budget and self.reserved + request.reserved > self.kv_budget:
                return
            self.waiting.popleft()
            try:
                self._start(request)
            except Exception as err:  # e.g. a visual that does not fit its slots: this request only
                self._fail(request, err)
                continue
            self.running.append(request)
            self.reserved += request.reserved

    def _plan(self) -> list[tuple[Request, int]]:
        """(request, new positions) of this step: every decoding row's one token, then prompt chunks in
        arrival order up to `chunk_tokens` (each prompt's chunks are cut the same way however it is batched)."""
        rows = [(r, 1) for r in self.running if not r.reading]
        budget = self.chunk_tokens
        for request in self.running:
            if not request.reading:
                continue
            size = min(request.reading, self.chunk_tokens)
            if size > budget and budget < self.chunk_tokens:
                break
            rows.append((request, size))
            budget -= size
            if budget <= 0:
                break
        return rows

    def _forward(self, rows: list[tuple[Request, int]]) -> list[tuple[Request, int]]:
        model = self.model
        decoding = [r for r, _ in rows if not r.reading]
        parts = []
        if decoding:
            last = torch.tensor([r.tokens[-1] for r in decoding], device=model.device)
            parts.append(model.language_model.embed_tokens(last))
        parts += [self._chunk(r, n) for r, n in rows if r.reading]
        spans, offset = [], 0
        for request, size in rows:
            assert request.cache is not None
            spans.append(Span(request.cache, offset, size))
            offset += size
        hidden = packed_forward(model.language_model, torch.cat(parts), spans)
        ends, sampled = [], []
        for (request, size), span in zip(rows, spans):
            if request.reading:
                continue
            if not request.tokens:  # the prompt was read in this step
                self._store(request)
            ends.append(span.offset + size - 1)
            sampled.append(request)
        if not sampled:
            return []
        logits = model.lm_head(hidden[ends])
        # the step's one device-to-host sync
        tokens = pick(logits, [(r.sampling, r.generator) for r in sampled]).tolist()
        for request, token in zip(sampled, tokens):
            self._append(request, token)
        return list(zip(sampled, tokens))

    def _append(self, request: Request, token: int) -> None:
        request.tokens.append(token)
        if token in request.sampling.stop_token_ids:
            request.finish = "stop"
        elif len(request.tokens) >= request.sampling.max_new_tokens:
            request.finish = "length"
        if request.finish is not None:
            self._store(request)
            self._release(request)

    # ------------------------------------------------------------------ a request's start
    def _start(self, request: Request) -> None:
        """Reserve the row's cache and start it from the longest cached prefix of the prompt."""
        model, prompt = self.model, request.prompt
        request.cache = RowCache(model.config.text, len(prompt) + request.sampling.max_new_tokens, model.dtype,
                                 model.device)
        request.ids = torch.tensor(prompt.input_ids, dtype=torch.long)
        if self.vision_cache is not None or self.prefix_cache is not None:
            request.visual_keys = [visual_key(v) for v in prompt.visuals]
        if self.prefix_cache is not None:
            request.key = self._prompt_key(request.ids, prompt.visuals, request.visual_keys)
            start, entry = self.prefix_cache.lookup(request.key, fingerprint(model))
            if entry is not None:
                request.cache.preload(entry.keys, entry.values, start)
        request.generator = generator(request.sampling, model.device)

    def _chunk(self, request: Request, size: int) -> torch.Tensor:
        """(size, H) embeddings of the next `size` prompt positions, with the tokens of the visuals whose slots
        fall there. Visuals are encoded when their first slot comes up, so a long video is encoded a few frames
        a step, like its prefill, and running answers keep flowing meanwhile."""
        model, visuals = self.model, request.prompt.visuals
        assert request.cache is not None and request.ids is not None
        image, start = model.config.image_token_id, request.cache.filled
        part = request.ids[start : start + size].to(model.device)
        slots = part == image
        embeds = model.language_model.embed_tokens(part.masked_fill(slots, 0))
        if not slots.any():
            return embeds
        first = int((request.ids[:start] == image).sum())  # visual tokens before this chunk
        last = first + int(slots.sum())
        offsets = _token_offsets(visuals)
        here = [i for i, (v, o) in enumerate(zip(visuals, offsets)) if o < last and o + v.num_tokens > first]
        self._encode(request, [i for i in here if i not in request.encoded])
        pieces = [request.encoded[i][max(first - offsets[i], 0) : last - offsets[i]] for i in here]
        for i in here:
            if offsets[i] + visuals[i].num_tokens <= last:
                del request.encoded[i]  # every slot of it is filled now
        return merge_visual_tokens(embeds[None], slots[None], torch.cat(pieces))[0]

    def _encode(self, request: Request, indices: list[int]) -> None:
        """Tower + projector + arrange for the request's visuals at `indices` (the vision cache first)."""
        if not indices:
            return
        visuals = [request.prompt.visuals[i] for i in indices]
        if self.vision_cache is not None:
            tokens = self.vision_cache.tokens(self.model, visuals, [request.visual_keys[i] for i in indices])
        else:
            tokens = self.model.encode_visuals(visuals)
        request.encoded.update(zip(indices, tokens))

    def _prompt_key(self, ids: torch.Tensor, visuals: Sequence[VisualInput], keys: list[tuple]) -> PromptKey:
        """What the prompt's keys and values depend on: its ids and where each visual (by content) starts."""
        slots = (ids == self.model.config.image_token_id).nonzero().flatten().tolist()  # one per visual token
        return PromptKey(ids, tuple((slots[first], key) for first, key in zip(_token_offsets(visuals), keys)))

    def _store(self, request: Request) -> None:
        """Keep the keys and values computed so far for later prompts that share a prefix with them: the prompt
        once it is read (another question about the same images, asked meanwhile), then prompt + answer when
        it ends (the next turn of the chat resends both; that entry replaces the prompt's)."""
        if self.prefix_cache is None or request.key is None or request.cache is None:
            return
        cache, length = request.cache, request.cache.filled  # the last sampled token has no keys yet
        key = request.key
        if length > len(key.ids):
            answer = torch.tensor(request.tokens[: length - len(key.ids)], dtype=torch.long)
            key = PromptKey(torch.cat([key.ids, answer]), key.visuals)
        self.prefix_cache.store(key, lambda: cache.prefix(length))

    # ------------------------------------------------------------------ whole prompts
    def stream(self, prompts: Sequence[Encoded], sampling: SamplingConfig | Sequence[SamplingConfig]
               ) -> Iterator[list[int | None]]:
        """Run prompts to their end; yield, per step that produced any of their tokens, each prompt's new token
        (None: none this step). Raises the first error of one of them (the others are then cancelled)."""
        settings = [sampling] * len(prompts) if isinstance(sampling, SamplingConfig) else list(sampling)
        requests: list[Request] = []
        try:
            for prompt, setting in zip(prompts, settings):
                requests.append(self.submit(prompt, setting))
            while any(r.finish is None for r in requests):
                produced = dict(self.step())
                for request in requests:
                    if request.error is not None:
                        raise request.error
                if any(r in produced for r in requests):
                    yield [produced.get(r) for r in requests]
        finally:
            for request in requests:
                self.cancel(request)

    def generate(self, prompts: Sequence[Encoded], sampling: SamplingConfig | Sequence[SamplingConfig]
                 ) -> list[list[int]]:
        """All generated tokens per prompt, each ending with its stop token if one was produced."""
        out: list[list[int]] = [[] for _ in prompts]
        for step in self.stream(prompts, sampling):
            for row, token in enumerate(step):
                if token is not None:
                    out[row].append(token)
        return out


def _token_offsets(visuals: Sequence[VisualInput]) -> list[int]:
    """How many visual tokens come before each visual (its first slot's rank among the image slots)."""
    return list(accumulate((v.num_tokens for v in visuals), initial=0))[:-1]
