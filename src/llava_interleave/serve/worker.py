"""One thread owns the model: it feeds queued jobs to the engine between its steps and turns tokens into events.

Continuous batching: between two engine steps the thread hands newly queued jobs to the engine, so a
request joins the running batch at the next step and leaves at the step it ends; a short question asked
while a long answer streams is answered at once instead of after it. Any sampling settings share a batch
(the engine samples each row by its own settings and seed). Each job keeps its own token budget and stop
strings; a job whose client left or whose deadline passed, or that ended on a stop string, is cancelled in
the engine at once, so its row and KV memory are free for the next step. A row that breaks the model fails
alone (the engine retries a failed step row by row) and gets a 500; the others keep going. Jobs wait in a
bounded queue until the engine has a row for them: `submit` past `queue_size` raises a 429. Results go back
to the request's event loop as `Event`s.

`batching="static"` is for benchmarks only: jobs are handed over only when the engine has none, so a batch
runs to its longest answer before anyone else starts (how the server scheduled before continuous batching).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import Counter, deque
from dataclasses import dataclass, field, replace

from ..api import Pipeline
from ..data.batch import Encoded
from ..data.text_stream import TextStream
from ..engine import Request, SamplingConfig
from ..errors import KVBudgetError, PromptError
from .errors import ApiError, Deadline, bad_request
from .settings import Batching

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

    def emit(self, event: Event) -> None:
        """Thread-safe: hand an event to the request's coroutine."""
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


@dataclass(eq=False)
class _Row:
    """A job in the engine, with the text of its answer so far."""

    job: Job
    stream: TextStream


class Worker:
    """Feeds the pipeline's engine, whose `max_rows` bounds the jobs decoding together; only this worker's
    thread calls the engine while the server runs."""

    def __init__(self, pipe: Pipeline, queue_size: int = 64, batching: Batching = "continuous") -> None:
        self.pipe = pipe
        self.engine = pipe.engine
        self.queue_size = queue_size
        self.static = batching == "static"
        # Counters for /health, updated together after every step (so they agree with each other):
        self.running = 0  # jobs the engine is generating
        self.served: Counter[str] = Counter()  # finish reasons; "cancelled" (client left), "timeout", "error" too
        self.rows_per_step: Counter[int] = Counter()  # how well requests share steps: requests given a token -> steps
        self.kv_reserved_mb = 0.0
        self._admitting = 0  # handed to the engine, not started by it yet (no row or no KV memory free)
        self._waiting: deque[Job] = deque()  # not handed to the engine yet
        self._rows: dict[Request, _Row] = {}  # the jobs in the engine (the worker thread's own)
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="llava-interleave-worker", daemon=True)

    @property
    def queued(self) -> int:
        """Jobs waiting for a row: in this queue, or handed to the engine and not started."""
        return len(self._waiting) + self._admitting

    def stats(self) -> dict[str, object]:
        """A consistent snapshot for /health (the worker thread updates the counters)."""
        with self._cond:
            return {"queued": self.queued, "running": self.running, "served": dict(self.served),
                    "rows_per_step": dict(self.rows_per_step), "kv_reserved_mb": round(self.kv_reserved_mb, 3)}

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
        while self._take():
            if not self._rows:  # every job handed over was refused: nothing to step
                continue
            try:
                produced = dict(self.engine.step())
            except Exception:  # a fault of the engine itself (a row's fault fails that row inside the step)
                log.exception("an engine step failed; failing its %d requests", len(self._rows))
                self._settle(dict.fromkeys(self._rows, "error"), None)
                continue
            self._settle(self._finished(produced), len(produced))
        for request in self._rows:  # stopping: leave the shared engine empty for whoever uses it next
            self.engine.cancel(request)
        self._rows.clear()

    def _take(self) -> bool:
        """Hand queued jobs to the engine while it has rows for them (static: only once it has none left);
        wait while there is nothing to do. False once the worker stops."""
        with self._cond:
            while True:
                self._purge()
                if self._stopping:
                    return False
                if self._waiting or self._rows:
                    break
                self._cond.wait()
            free = 0 if self.static and self._rows else self.engine.max_rows - len(self._rows)
            jobs = [self._waiting.popleft() for _ in range(min(free, len(self._waiting)))]
        for job in jobs:
            self._submit(job)
        return True

    def _purge(self) -> None:
        """Drop waiting jobs whose client left or whose deadline passed, so they hold no queue place (lock held)."""
        for job in [j for j in self._waiting if j.abandoned]:
            self._waiting.remove(job)
            self.served[job.abandoned or "cancelled"] += 1

    def _submit(self, job: Job) -> None:
        """Put a job in the engine; one it refuses is answered at once (the app checks the KV budget first)."""
        try:
            request = self.engine.submit(job.encoded, replace(job.sampling, stop_token_ids=self.pipe.stop_ids))
        except PromptError as err:
            code = "context_length_exceeded" if isinstance(err, KVBudgetError) else "invalid_prompt"
            job.emit(Event(error=bad_request(str(err), code, "messages")))
            return
        self._rows[request] = _Row(job, TextStream(self._decode, job.stops))

    def _finished(self, produced: dict[Request, int]) -> dict[Request, str]:
        """Feed this step's tokens to their jobs' texts; the rows that end now, with their reasons."""
        ended: dict[Request, str] = {}
        for request, row in self._rows.items():
            reason = row.job.abandoned
            if reason is None and request in produced:
                reason = self._push(row, produced[request])
            elif reason is None:
                reason = request.finish  # "error": the row broke the model; None: waiting or still prefilling
            if reason is not None:
                ended[request] = reason
        return ended

    def _push(self, row: _Row, token: int) -> str | None:
        """Feed one token to a job's text; its finish reason once it is done."""
        if token in self.pipe.stop_ids:
            return "stop"
        if piece := row.stream.push(token):
            row.job.emit(Event(text=piece))
        if row.stream.stopped:
            return "stop"
        return "length" if len(row.stream.ids) >= row.job.sampling.max_new_tokens else None

    def _settle(self, ended: dict[Request, str], rows: int | None) -> None:
        """Free the rows that ended (cancelled in the engine, which frees a stopped or abandoned one at once),
        count them and the step (`rows`: requests given a token; None: the step failed), then answer them."""
        finished = [(self._rows.pop(request), reason) for request, reason in ended.items()]
        for request in ended:
            self.engine.cancel(request)  # a no-op for a request the engine finished itself
        engine = self.engine
        with self._cond:
            self.served.update(ended.values())
            if rows is not None:
                self.rows_per_step[rows] += 1
            self.running, self._admitting = len(engine.running), len(engine.waiting)
            self.kv_reserved_mb = engine.reserved / 2**20
        for row, reason in finished:
            self._answer(row, reason)

    @staticmethod
    def _answer(row: _Row, reason: str) -> None:
        """A finished job's last text and its end; a failed one's 500; nothing for a job nobody waits for."""
        if reason == "error":
            row.job.emit(Event(error=ApiError(500, "generation failed (logged on the server)", "generation_failed",
                                              "server_error")))
        elif reason in ("stop", "length"):
            if rest := row.stream.flush():
                row.job.emit(Event(text=rest))
            row.job.emit(Event(finish=reason, completion_tokens=len(row.stream.ids)))

    def _decode(self, ids: list[int]) -> str:
        return self.pipe.tokenizer.decode(ids, skip_special_tokens=True)
