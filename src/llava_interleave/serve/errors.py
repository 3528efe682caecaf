"""Errors a client causes, answered as OpenAI does: a 4xx status and `{"error": {message, type, code, param}}`.

A message names the input at fault (`param`, e.g. "messages[0].content[1].image_url") and never holds a
server path, a library's message or an object's repr: it is shown to whoever sent the request.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any


class ApiError(Exception):
    """An error with its HTTP status and OpenAI error type; raised anywhere, answered by the app."""

    def __init__(self, status: int, message: str, code: str, type_: str = "invalid_request_error", param: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.type = type_
        self.param = param

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "code": self.code, "param": self.param}}


def bad_request(message: str, code: str = "invalid_request", param: str | None = None, status: int = 400) -> ApiError:
    """A client error (400 unless said) whose message starts with the input at fault, when there is one."""
    return ApiError(status, f"{param}: {message}" if param else message, code, param=param)


@dataclass(frozen=True)
class Deadline:
    """When a request's answer stops being worth any work. Every stage checks it (reading the body, waiting
    for a decoding slot, decoding each image and frame, tokenising, queueing, generating), so `--timeout`
    bounds them all and a slow stage cannot hold resources past it."""

    at: float  # time.monotonic()
    timeout_s: float

    @classmethod
    def after(cls, timeout_s: float) -> Deadline:
        return cls(time.monotonic() + timeout_s, timeout_s)

    def remaining(self) -> float:
        return self.at - time.monotonic()

    @property
    def passed(self) -> bool:
        return time.monotonic() > self.at

    def check(self) -> None:
        """Raises: ApiError 504 once the deadline has passed."""
        if self.passed:
            raise self.error()

    def error(self) -> ApiError:
        return ApiError(504, f"no answer within {self.timeout_s:g} s", "timeout", "timeout_error")
