"""Errors of the OpenAI API, in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``.

The HTTP status comes from :data:`brogue.errors.WIRE` (each :class:`~brogue.errors.ErrorCode`'s one
HTTP status), except for the few HTTP routing answers no stream code covers (405). ``code`` is
Brogue's error code (the WebSocket ``error`` code, the ``kind`` of ``brogue_errors_total``);
``type`` is OpenAI's class of error: ``invalid_request_error`` (4xx), ``requests`` (429, as
OpenAI's rate limits), ``server_error`` (5xx).
"""

from __future__ import annotations

import json

from brogue.errors import WIRE, ErrorCode

__all__ = ["ApiError", "RETRY_AFTER_SECONDS"]

RETRY_AFTER_SECONDS = 1  # Retry-After of a 429 (the tenant's streams are full) and a 503 (no Triton)


class ApiError(Exception):
    def __init__(self, code: ErrorCode | str, message: str, *, param: str | None = None, status: int | None = None,
                 headers: tuple = ()):
        super().__init__(message)
        self.code = ErrorCode(code)
        self.param = param
        self.status = status or WIRE[self.code].http_status
        self.extra_headers = tuple(headers)

    @classmethod
    def from_stream_error(cls, e) -> "ApiError":
        """An :class:`~brogue.server.gateway.StreamError` as an API error."""
        return cls(e.code, str(e))

    @property
    def type(self) -> str:
        if self.status == 429:
            return "requests"
        return "server_error" if self.status >= 500 else "invalid_request_error"

    def body(self) -> dict:
        return {"error": {"message": str(self), "type": self.type, "param": self.param, "code": self.code.value}}

    def headers(self) -> list[tuple[str, str]]:
        out = [("Content-Type", "application/json")]
        if self.status in (429, 503):
            out.append(("Retry-After", str(RETRY_AFTER_SECONDS)))
        return out + list(self.extra_headers)

    def encode(self) -> bytes:
        return json.dumps(self.body()).encode()
