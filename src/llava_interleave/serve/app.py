"""The HTTP app: OpenAI-style routes, authentication, limits and errors around one `Worker`.

A request is refused as early and as cheaply as it can be: by its Host and Origin, its content type, its
body size (while reading it), its JSON and fields (`protocol`), its length in characters and its model
name; only then are its media decoded (by at most `max_decoding` requests at once) and its prompt
tokenised, in the server's thread pool and by the request's deadline, so the worker thread only generates.
Every failure a client can cause is an `ApiError` answered as JSON; anything else is a logged 500 that
fails only its own request and leaves the connection open.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable
from contextlib import aclosing, asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from fastapi import Depends, FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..api import Pipeline
from ..engine import SamplingConfig
from ..errors import ContextLengthError, PromptError
from .errors import ApiError, Deadline, bad_request
from .protocol import (
    MAX_NUMBER_DIGITS,
    ChatRequest,
    chunk,
    completion_body,
    error_event,
    parse_request,
    to_messages,
    usage_chunk,
)
from .settings import ANY_HOST, ServeSettings
from .worker import Event, Job, Worker

STATIC = Path(__file__).parent / "static"
POLL_S = 0.2  # how often a waiting request looks for a client that went away
T = TypeVar("T")
log = logging.getLogger("llava_interleave.serve")


class Server:
    """Turns requests into jobs and jobs' events into responses."""

    def __init__(self, pipe: Pipeline, settings: ServeSettings) -> None:
        self.pipe = pipe
        self.settings = settings
        pipe.engine.configure(max_rows=settings.max_batch, kv_mb=settings.kv_mb, chunk_tokens=settings.chunk_tokens)
        self.worker = Worker(pipe, settings.queue_size, settings.batching)
        self._decoding = asyncio.Semaphore(settings.max_decoding)
        # No token is longer than the vocabulary's longest, so a text with more characters than this cannot fit.
        self.max_characters = pipe.config.max_length * max(map(len, pipe.tokenizer.get_vocab()))
        # One encode now settles the tokenizer's padding/truncation state; after it, encoding only reads the
        # tokenizer, so request threads share it with no lock and a long prompt delays nobody else.
        pipe.tokenizer.encode("", add_special_tokens=False)

    async def accept(self, http: Request, deadline: Deadline) -> tuple[ChatRequest, Job]:
        """The request read, checked, decoded and tokenised, cheapest checks first, by its deadline."""
        media_type = http.headers.get("content-type", "").partition(";")[0].strip().lower()
        if media_type != "application/json":
            raise ApiError(415, "send the body as JSON, with the header Content-Type: application/json",
                           "unsupported_media_type")
        body = await _within(deadline, read_body(http, self.settings.limits.max_body_bytes))
        chat = await run_in_threadpool(parse_request, body)
        self.check(chat)
        async with self._decoding_slot(chat, deadline):
            job = await run_in_threadpool(self.prepare, chat, deadline, asyncio.get_running_loop())
        return chat, job

    def check(self, chat: ChatRequest) -> None:
        """The checks that need this server's model, all cheap: its name, and a prompt or answer that cannot fit."""
        name, context = self.settings.model_name, self.pipe.config.max_length
        if chat.model is not None and chat.model != name:
            raise bad_request(f"the model {chat.model!r} does not exist: this server serves {name!r}",
                              "model_not_found", "model", 404)
        if chat.characters > self.max_characters:
            raise bad_request(f"{chat.characters} characters of text cannot fit in the model's context of {context} "
                              "tokens", "context_length_exceeded", "messages")
        if (chat.requested_tokens or 0) >= context:
            raise bad_request(f"{chat.requested_tokens} tokens leave no room for the prompt in the model's context of "
                              f"{context} tokens", "context_length_exceeded", "max_tokens")

    @asynccontextmanager
    async def _decoding_slot(self, chat: ChatRequest, deadline: Deadline) -> AsyncIterator[None]:
        """Requests with media wait here (by their deadline) so that few decode at once, bounding memory."""
        if not chat.has_media:
            yield
            return
        await _within(deadline, self._decoding.acquire())
        try:
            yield
        finally:
            self._decoding.release()

    def prepare(self, chat: ChatRequest, deadline: Deadline, loop: asyncio.AbstractEventLoop) -> Job:
        """Decode media and tokenise (blocking: runs in a pool thread); checks the prompt fits with its answer, in
        the context and in the KV budget (a request waits for KV memory, so one that could never fit is refused)."""
        messages = to_messages(chat, self.settings, deadline)
        deadline.check()
        wanted = chat.requested_tokens
        try:
            encoded = self.pipe.prepare(self.pipe.sample(messages), answer_tokens=wanted or 1)
        except ContextLengthError as err:
            raise bad_request(str(err), "context_length_exceeded", "messages") from None
        except PromptError as err:
            raise bad_request(str(err), "invalid_prompt", "messages") from None
        deadline.check()
        room = self.pipe.config.max_length - len(encoded)
        if (kv_tokens := self.pipe.engine.kv_tokens) is not None:  # refuse what could never fit, before queueing
            if len(encoded) + (wanted or 1) > kv_tokens:
                answer = f" with {wanted} answer tokens" if wanted else ""
                raise bad_request(f"the prompt ({len(encoded)} tokens){answer} needs more key and value memory than "
                                  f"this server's budget holds ({kv_tokens} tokens, --kv-mb {self.settings.kv_mb:g})",
                                  "context_length_exceeded", "messages")
            room = min(room, kv_tokens - len(encoded))
        max_tokens = wanted or min(self.settings.limits.default_max_tokens, room)
        sampling = SamplingConfig(max_new_tokens=max_tokens, temperature=chat.temperature, top_p=chat.top_p,
                                  seed=chat.seed)
        return Job(encoded=encoded, sampling=sampling, stops=chat.stops, deadline=deadline, loop=loop)

    async def events(self, job: Job, request: Request) -> AsyncIterator[Event]:
        """The job's events up to its end; stops early (cancelling the job) when the client disconnects.

        Raises:
            ApiError: 504 once the deadline passes, or the worker's error."""
        checked = time.monotonic()
        try:
            while True:
                job.deadline.check()
                if time.monotonic() - checked > POLL_S:
                    checked = time.monotonic()
                    if await request.is_disconnected():
                        return
                try:
                    event = await asyncio.wait_for(job.events.get(), min(job.deadline.remaining(), POLL_S))
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


async def _within(deadline: Deadline, awaitable: Awaitable[T]) -> T:
    """`awaitable`'s result, or the deadline's 504 once it passes first."""
    try:
        return await asyncio.wait_for(awaitable, max(deadline.remaining(), 0.0))
    except TimeoutError:
        raise deadline.error() from None


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it is known to exceed `limit` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and (len(declared) > MAX_NUMBER_DIGITS or int(declared) > limit):
        raise ApiError(413, f"the request body is {declared[:MAX_NUMBER_DIGITS]} bytes, over the limit of {limit}",
                       "request_too_large")
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
    app.add_middleware(SameSite, allowed_hosts=settings.allowed_hosts)
    app.add_middleware(CatchAll)  # added last: the outermost, so it also answers for the others
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
        chat, job = await server.accept(request, Deadline.after(settings.timeout_s))
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
        """Starlette's own errors (unknown route, wrong method) in the API's format, their headers (Allow) kept."""
        code = {404: "not_found", 405: "method_not_allowed"}.get(err.status_code, "http_error")
        body = ApiError(err.status_code, str(err.detail), code).body()
        return JSONResponse(body, status_code=err.status_code, headers=err.headers)


class SameSite:
    """Refuses a request whose Host or Origin header names a site this server was not told it is: a web
    page the local user opens (a cross-site POST) or DNS rebinding (a foreign name resolving to 127.0.0.1)
    would otherwise use a key-less server on loopback. Same-origin pages (the chat page) pass."""

    def __init__(self, app: ASGIApp, allowed_hosts: tuple[str, ...]) -> None:
        self.app = app
        self.allowed = {h.lower().strip("[]") for h in allowed_hosts}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        refusal = self._refusal(Headers(scope=scope)) if scope["type"] == "http" else None
        if refusal is None:
            await self.app(scope, receive, send)
        else:
            await JSONResponse(refusal.body(), status_code=refusal.status)(scope, receive, send)

    def _refusal(self, headers: Headers) -> ApiError | None:
        host = headers.get("host", "")
        if not self._allowed(host):
            return ApiError(400, "the Host header names a host this server does not answer for (see --allowed-hosts)",
                            "invalid_host")
        origin = headers.get("origin")
        source = _netloc(origin) if origin is not None else host
        if source.lower() != host.lower() and not self._allowed(source):
            return ApiError(403, "requests from other web sites are refused (see --allowed-hosts)", "forbidden_origin",
                            "permission_error")
        return None

    def _allowed(self, netloc: str) -> bool:
        """Whether a host[:port] names an allowed host; a malformed one (user info included) never does."""
        try:
            name = urlsplit(f"//{netloc}").hostname
        except ValueError:
            return False
        return ANY_HOST in self.allowed or ("@" not in netloc and name is not None and name in self.allowed)


def _netloc(url: str) -> str:
    try:
        return urlsplit(url).netloc
    except ValueError:
        return ""


class CatchAll:
    """Answers an unexpected exception with a logged 500 instead of letting it reach the server, which
    would close the kept-alive connection without a word; a stream already started can only be cut."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def sending(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, sending)
        except Exception:  # the last line of defence: any fault fails this request only
            log.exception("internal error")
            if not started:
                error = ApiError(500, "internal server error (logged on the server)", "internal_error", "server_error")
                await JSONResponse(error.body(), status_code=500)(scope, receive, send)
