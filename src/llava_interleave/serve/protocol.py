"""The OpenAI chat-completions format: request validation, conversion to pipeline messages, response bodies.

Content parts: {"type": "text", "text"}, {"type": "image_url", "image_url": {"url"}} (or the URL as a
string), and two for video, which OpenAI's format lacks: {"type": "video", "video": [frame URLs]} and
{"type": "video_url", "video_url": {"url", "frames"}} for a whole file. Each video fills one `<image>` slot.
"""

from __future__ import annotations

import json
import time
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..data.sample import Modality, Visual
from .errors import ApiError, bad_request
from .media import load_image_url, load_video_url
from .settings import ServeSettings


class Url(BaseModel):
    url: str
    frames: Annotated[int, Field(ge=1)] | None = None  # video_url only


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ImagePart(BaseModel):
    type: Literal["image_url"]
    image_url: Url | str


class VideoFramesPart(BaseModel):
    type: Literal["video"]
    video: Annotated[list[Url | str], Field(min_length=1)]


class VideoPart(BaseModel):
    type: Literal["video_url"]
    video_url: Url | str


Part = Annotated[TextPart | ImagePart | VideoFramesPart | VideoPart, Field(discriminator="type")]


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str | list[Part] | None = None


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatRequest(BaseModel):
    """The fields we read; others that OpenAI clients send (user, logprobs=false ...) are ignored."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] = 0.0  # greedy unless asked, like the CLI
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0
    n: int = 1
    stop: str | Annotated[list[str], Field(max_length=4)] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None

    @property
    def stops(self) -> tuple[str, ...]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return tuple(s for s in stops if s)

    @property
    def requested_tokens(self) -> int | None:
        return self.max_tokens or self.max_completion_tokens


def parse_request(body: bytes) -> ChatRequest:
    """Validated request, or a 400 that names the first bad field."""
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise bad_request(f"the body is not valid JSON: {err}", "invalid_json") from None
    try:
        request = ChatRequest.model_validate(data)
    except ValidationError as err:
        problems = [(".".join(str(p) for p in e["loc"]), e["msg"]) for e in err.errors()[:3]]
        message = "; ".join(f"{where}: {msg}" if where else msg for where, msg in problems)
        raise bad_request(message, "invalid_request", problems[0][0] or None) from None
    if request.n != 1:
        raise bad_request("only n=1 is supported", "unsupported_n", "n")
    return request


def to_messages(request: ChatRequest, settings: ServeSettings) -> list[dict[str, Any]]:
    """Pipeline messages whose content holds strings and decoded `Visual`s, within the visual-count limit."""
    limits = settings.limits
    count = 0
    messages = []
    for message in request.messages:
        parts = [message.content or ""] if not isinstance(message.content, list) else message.content
        content: list[str | Visual] = []
        for part in parts:
            if isinstance(part, str):
                content.append(part)
            elif isinstance(part, TextPart):
                content.append(part.text)
            else:
                count += 1
                if count > limits.max_images:
                    raise bad_request(f"too many images/videos: the limit is {limits.max_images} per request", "too_many_images")
                content.append(_visual(part, settings))
        messages.append({"role": message.role, "content": content})
    return messages


def _visual(part: ImagePart | VideoFramesPart | VideoPart, settings: ServeSettings) -> Visual:
    max_frames = settings.limits.max_frames
    if isinstance(part, ImagePart):
        return Visual((load_image_url(_url(part.image_url), settings),), Modality.IMAGE)
    if isinstance(part, VideoFramesPart):
        if len(part.video) > max_frames:
            raise bad_request(f"too many video frames: {len(part.video)}, the limit is {max_frames}", "too_many_frames")
        return Visual(tuple(load_image_url(_url(u), settings) for u in part.video), Modality.VIDEO)
    frames = part.video_url.frames if isinstance(part.video_url, Url) else None
    if (frames or 0) > max_frames:
        raise bad_request(f"too many video frames: {frames}, the limit is {max_frames}", "too_many_frames")
    return Visual(tuple(load_video_url(_url(part.video_url), frames or min(16, max_frames), settings)), Modality.VIDEO)


def _url(value: Url | str) -> str:
    return value.url if isinstance(value, Url) else value


def completion_body(
    request_id: str, model: str, text: str, finish: str, prompt_tokens: int, completion_tokens: int
) -> dict[str, Any]:
    return {
        "id": request_id, "object": "chat.completion", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}],
        "usage": usage(prompt_tokens, completion_tokens),
    }


def chunk(request_id: str, model: str, delta: dict[str, Any], finish: str | None = None) -> str:
    """One server-sent event in the chat.completion.chunk format."""
    body = {
        "id": request_id, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return sse(body)


def usage_chunk(request_id: str, model: str, prompt_tokens: int, completion_tokens: int) -> str:
    body = {"id": request_id, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
            "choices": [], "usage": usage(prompt_tokens, completion_tokens)}
    return sse(body)


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens}


def sse(body: dict[str, Any]) -> str:
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"


def error_event(error: ApiError) -> str:
    """A failure after the stream started (its status line is already sent): an error object as the last event."""
    return sse(error.body())
