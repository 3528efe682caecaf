"""Errors a client causes, answered as OpenAI does: a 4xx status and `{"error": {message, type, code}}`."""

from __future__ import annotations

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


def bad_request(message: str, code: str = "invalid_request", param: str | None = None) -> ApiError:
    return ApiError(400, message, code, param=param)
