"""The HTTP app: OpenAI-style routes, authentication, limits and errors around one `Worker`.

A request is read (bounded), validated, its media decoded and its prompt tokenised in a thread of the
server's pool, so the worker thread only generates. Every failure a client can cause is an `ApiError`
answered as JSON; anything else is a logged 500, and the server keeps serving.
"""

from __future__ import annotations

import asyncio
import hmac
import threading
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import aclosing, asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from ..api import Pipeline
from ..errors import PromptError
from .errors import ApiError, bad_request
from .protocol import ChatRequest, chunk, completion_body, error_event, parse_request, to_messages, usage_chunk
from .settings import ServeSettings
from .worker import Event, Job, Worker

STATIC = Path(__file__).parent / "static"
POLL_S = 0.2  # how often a waiting request looks for a client that went away


class Server:
    """Turns requests into jobs and jobs' events into responses."""

    def __init__(self, pipe: Pipeline, settings: ServeSettings) -> None:
        self.pipe = pipe
        self.settings = settings
        self.worker = Worker(pipe, settings.max_batch, settings.queue_size)
        self._encode_lock = threading.Lock()  # one tokenizer, shared with no other request thread at a time

    def prepare(self, request: ChatRequest, loop: asyncio.AbstractEventLoop, arrived: float) -> Job:
        """Decode media and tokenise (blocking: runs in a pool thread); checks the prompt fits with its answer."""
        messages = to_messages(request, self.settings)
        with self._encode_lock:
            try:
                encoded = self.pipe.processor.encode(self.pipe.sample(messages), add_generation_prompt=True)
            except PromptError as err:
                raise bad_request(str(err), "invalid_prompt", "messages") from None
        context, prompt = self.pipe.config.max_length, len(encoded)
        wanted = request.requested_tokens
        max_tokens = wanted or min(self.settings.limits.default_max_tokens, context - prompt)
        if prompt + max(max_tokens, 1) > context:
            raise bad_request(
                f"the prompt is {prompt} tokens (images expanded); with max_tokens {wanted or 1} that is over "
                f"the model's context of {context} tokens", "context_length_exceeded", "messages")
        return Job(encoded, max_tokens, request.temperature, request.top_p, request.seed, request.stops,
                   arrived + self.settings.timeout_s, loop)

    async def events(self, job: Job, request: Request) -> AsyncIterator[Event]:
        """The job's events up to its end; stops early (cancelling the job) when the client disconnects.

        Raises:
            ApiError: 504 once the deadline passes, or the worker's error."""
        checked = time.monotonic()
        try:
            while True:
                now = time.monotonic()
                if now > job.deadline:
                    raise ApiError(504, f"no answer within {self.settings.timeout_s:g} s", "timeout", "timeout_error")
                if now - checked > POLL_S:
                    checked = now
                    if await request.is_disconnected():
                        return
                try:
                    event = await asyncio.wait_for(job.events.get(), min(job.deadline - now, POLL_S))
                except TimeoutError:
                    continue
                if event.error is not None:
                    raise event.error
                yield event
                if event.finish is not None:
                    return
        finally:
            job.cancel()  # a no-op once the job is done

    async def complete(self, job: Job, request: Request, request_id: str) -> Response:
        pieces: list[str] = []
        async with aclosing(self.events(job, request)) as events:
            async for event in events:
                pieces.append(event.text)
                if event.finish is not None:
                    body = completion_body(request_id, self.settings.model_name, "".join(pieces), event.finish,
                                           len(job.encoded), event.completion_tokens)
                    return JSONResponse(body)
        return Response(status_code=499)  # the client left; nobody reads this

    async def stream(self, job: Job, request: Request, request_id: str, include_usage: bool) -> Response:
        """SSE response; it starts only with the first event, so a queue timeout is still a plain 504."""
        events = self.events(job, request)
        try:
            first = await anext(events)
        except StopAsyncIteration:
            return Response(status_code=499)
        name = self.settings.model_name

        async def body() -> AsyncIterator[str]:
            try:
                yield chunk(request_id, name, {"role": "assistant", "content": ""})
                event = first
                while True:
                    if event.text:
                        yield chunk(request_id, name, {"content": event.text})
                    if event.finish is not None:
                        yield chunk(request_id, name, {}, event.finish)
                        if include_usage:
                            yield usage_chunk(request_id, name, len(job.encoded), event.completion_tokens)
                        yield "data: [DONE]\n\n"
                        return
                    event = await anext(events)
            except ApiError as err:
                yield error_event(err)
            except StopAsyncIteration:  # the client left
                return
            finally:
                await events.aclose()

        return StreamingResponse(body(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it is known to exceed `limit` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"the request body is {declared} bytes, over the limit of {limit}", "request_too_large")
    chunks, size = [], 0
    async for part in request.stream():
        size += len(part)
        if size > limit:
            raise ApiError(413, f"the request body is over the limit of {limit} bytes", "request_too_large")
        chunks.append(part)
    return b"".join(chunks)


def require_key(api_key: str | None) -> Any:
    """A dependency that checks `Authorization: Bearer KEY` in constant time (no key set: everyone passes)."""

    async def check(request: Request) -> None:
        if api_key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), api_key.encode()):
            raise ApiError(401, "missing or wrong API key: send the header Authorization: Bearer KEY", "invalid_api_key",
                           "authentication_error")

    return Depends(check)


def create_app(pipe: Pipeline, settings: ServeSettings) -> FastAPI:
    """The app; its worker thread starts and stops with the app's lifespan. `app.state.server` exposes it."""
    server = Server(pipe, settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        server.worker.start()
        yield
        server.worker.stop()

    app = FastAPI(title="llava-interleave", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = server
    _add_error_handlers(app)
    auth = require_key(settings.api_key)
    started = int(time.time())

    @app.get("/health")
    async def health() -> dict[str, object]:
        return {"status": "ok", "model": settings.model_name, **server.worker.stats()}

    @app.get("/v1/models", dependencies=[auth])
    async def models() -> dict[str, object]:
        return {"object": "list", "data": [{"id": settings.model_name, "object": "model", "created": started,
                                            "owned_by": "llava-interleave"}]}

    @app.post("/v1/chat/completions", dependencies=[auth])
    async def chat_completions(request: Request) -> Response:
        arrived = time.monotonic()
        chat = parse_request(await read_body(request, settings.limits.max_body_bytes))
        job = await run_in_threadpool(server.prepare, chat, asyncio.get_running_loop(), arrived)
        server.worker.submit(job)
        request_id = f"chatcmpl-{uuid.uuid4().hex}"
        if chat.stream:
            include_usage = chat.stream_options is not None and chat.stream_options.include_usage
            return await server.stream(job, request, request_id, include_usage)
        return await server.complete(job, request, request_id)

    @app.get("/")
    async def page() -> FileResponse:
        """The chat page: static, holds no data, so it needs no key (the page asks for one for the API)."""
        return FileResponse(STATIC / "index.html", media_type="text/html")

    return app


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_: Request, err: ApiError) -> JSONResponse:
        return JSONResponse(err.body(), status_code=err.status)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, err: HTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(err.status_code, "http_error")
        return JSONResponse(ApiError(err.status_code, str(err.detail), code).body(), status_code=err.status_code)

    @app.exception_handler(Exception)
    async def server_error(_: Request, err: Exception) -> JSONResponse:
        error = ApiError(500, f"internal error: {type(err).__name__}", "internal_error", "server_error")
        return JSONResponse(error.body(), status_code=500)
