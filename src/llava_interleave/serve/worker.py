"""One thread owns the model: it takes queued jobs and runs compatible ones as one batch.

The engine samples a whole batch with one temperature/top-p and one generator, so jobs are batched only
when they share those (greedy jobs always can; a seeded sampled job runs alone, so its seed means the same
as on its own and no two seeds share a generator). Each row keeps its own token budget and stop strings,
and a row whose client left or whose deadline passed is dropped at the next step; the batch ends when no
row is left. A batch that fails runs again row by row, so a row that breaks the model fails alone. Waiting
jobs are bounded: `submit` past `queue_size` raises a 429. Results go back to the request's event loop as
`Event`s.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import Counter, deque
from contextlib import closing
from dataclasses import dataclass, field, replace

from ..api import Pipeline
from ..data.batch import Encoded
from ..data.text_stream import TextStream
from ..engine import SamplingConfig
from .errors import ApiError, Deadline

log = logging.getLogger("llava_interleave.serve")


@dataclass(frozen=True)
class Event:
    """Text to send, or the end: `finish` ("stop" | "length") with the token count, or an error."""

    text: str = ""
    finish: str | None = None
    completion_tokens: int = 0
    error: ApiError | None = None


@dataclass(eq=False, kw_only=True)
class Job:
    encoded: Encoded
    sampling: SamplingConfig  # its max_new_tokens is this job's own budget
    stops: tuple[str, ...]
    deadline: Deadline  # after it nobody waits for the answer
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue[Event] = field(default_factory=asyncio.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    sent: bool = False  # an event went out: the job cannot start again without the client seeing it twice

    @property
    def batch_key(self) -> tuple[object, ...]:
        if self.sampling.greedy:
            return ("greedy",)
        if self.sampling.seed is not None:
            return ("seeded", id(self))
        return ("sampled", self.sampling.temperature, self.sampling.top_p)

    def emit(self, event: Event) -> None:
        """Thread-safe: hand an event to the request's coroutine."""
        self.sent = True
        if not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)

    def cancel(self) -> None:
        self.cancelled.set()

    @property
    def abandoned(self) -> str | None:
        """Why nobody waits for this job any more: "timeout" (its deadline passed), "cancelled" (client left)."""
        if self.deadline.passed:
            return "timeout"
        return "cancelled" if self.cancelled.is_set() else None


class Worker:
    def __init__(self, pipe: Pipeline, max_batch: int = 4, queue_size: int = 64) -> None:
        self.pipe = pipe
        self.max_batch = max_batch
        self.queue_size = queue_size
        self.running = 0
        self.served: Counter[str] = Counter()  # finish reasons, "cancelled" (client left) and "timeout" included
        self.batch_sizes: Counter[int] = Counter()  # how well requests are batched: size -> batches run
        self._waiting: deque[Job] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="llava-interleave-worker", daemon=True)

    @property
    def queued(self) -> int:
        return len(self._waiting)

    def stats(self) -> dict[str, object]:
        """A consistent snapshot for /health (the worker thread updates the counters)."""
        with self._cond:
            return {"queued": len(self._waiting), "running": self.running, "served": dict(self.served),
                    "batch_sizes": dict(self.batch_sizes)}

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(timeout=30)

    def submit(self, job: Job) -> None:
        with self._cond:
            self._purge()
            if len(self._waiting) >= self.queue_size:
                raise ApiError(429, f"the server is busy: {self.queue_size} requests are already waiting", "queue_full", "rate_limit_error")
            self._waiting.append(job)
            self._cond.notify()

    def _loop(self) -> None:
        while (batch := self._next_batch()) is not None:
            with self._cond:
                self.running = len(batch)
                self.batch_sizes[len(batch)] += 1
            try:
                self._run(batch)
            finally:
                self.running = 0

    def _run(self, batch: list[Job]) -> None:
        """Generate a batch; when it fails, each row that has sent nothing yet runs again alone, so the rows
        batched with one that breaks the model still get their answers."""
        try:
            self._generate(batch)
        except Exception:  # a fault of the model or of one row: answer its jobs, keep serving
            log.exception("generation failed for a batch of %d", len(batch))
            for job in batch:
                if len(batch) > 1 and not job.sent:
                    self._run([job])
                else:
                    job.emit(Event(error=ApiError(500, "generation failed (logged on the server)", "generation_failed",
                                                  "server_error")))

    def _next_batch(self) -> list[Job] | None:
        """The oldest live job and up to max_batch - 1 later ones that can share its batch; None when stopping."""
        with self._cond:
            while True:
                self._purge()
                if self._stopping:
                    return None
                if self._waiting:
                    break
                self._cond.wait()
            batch = [self._waiting.popleft()]
            for job in list(self._waiting):
                if len(batch) == self.max_batch:
                    break
                if job.batch_key == batch[0].batch_key and self._fits(batch + [job]):
                    self._waiting.remove(job)
                    batch.append(job)
            return batch

    def _fits(self, jobs: list[Job]) -> bool:
        """Left padding puts every row at the longest prompt: each must still fit prompt + budget in the context."""
        return max(len(j.encoded) for j in jobs) + max(j.sampling.max_new_tokens for j in jobs) <= self.pipe.config.max_length

    def _purge(self) -> None:
        """Drop waiting jobs whose client left or whose deadline passed, so they hold no queue place (lock held)."""
        for job in [j for j in self._waiting if j.abandoned]:
            self._waiting.remove(job)
            self.served[job.abandoned or "cancelled"] += 1

    def _generate(self, batch: list[Job]) -> None:
        pipe = self.pipe
        first = batch[0]
        sampling = replace(first.sampling, max_new_tokens=max(j.sampling.max_new_tokens for j in batch),
                           stop_token_ids=pipe.stop_ids)
        streams = [TextStream(self._decode, job.stops) for job in batch]
        live = set(range(len(batch)))
        with closing(pipe.engine.stream([j.encoded for j in batch], sampling)) as steps:
            for step in steps:
                for row in list(live):
                    finish = self._advance(batch[row], streams[row], step[row])
                    if finish is not None:
                        live.discard(row)
                        self._finish(batch[row], streams[row], finish)
                if not live:
                    return
        for row in live:  # the engine ran out of room in the context
            self._finish(batch[row], streams[row], "length")

    def _advance(self, job: Job, stream: TextStream, token: int | None) -> str | None:
        """Feed one token to a row; its finish reason once it is done."""
        if reason := job.abandoned:
            return reason
        if token is None or token in self.pipe.stop_ids:
            return "stop"
        piece = stream.push(token)
        if piece:
            job.emit(Event(text=piece))
        if stream.stopped:
            return "stop"
        return "length" if len(stream.ids) >= job.sampling.max_new_tokens else None

    def _finish(self, job: Job, stream: TextStream, finish: str) -> None:
        with self._cond:
            self.served[finish] += 1
        if finish in ("stop", "length"):
            rest = stream.flush()
            if rest:
                job.emit(Event(text=rest))
            job.emit(Event(finish=finish, completion_tokens=len(stream.ids)))

    def _decode(self, ids: list[int]) -> str:
        return self.pipe.tokenizer.decode(ids, skip_special_tokens=True)
