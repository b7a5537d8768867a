"""What went wrong with a stream, as one code carried from the engine and the Triton model to the
gateway, and what each code becomes on the wire.

The Triton model reports a refused request as a message that starts with its code in brackets
(:func:`tagged`: ``"[capacity] stream capacity reached: ..."``): a Triton stream reply carries a
message only, so the code travels in it, and the gateway reads it back with :func:`split_tag`,
never by searching the message. Each code maps once, here (:data:`WIRE`), to a WebSocket close
code, a gRPC status and an HTTP status. Imports nothing beyond the standard library: the Triton
container's python backend and the gateway both use it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum


class ErrorCode(StrEnum):
    """Why a stream (or a request of it) was refused or ended. The values are the ``code`` of the
    WebSocket ``error`` message and the ``kind`` label of ``brogue_errors_total``."""

    UNAUTHENTICATED = "unauthenticated"  # no key, or a wrong one
    LIMIT = "limit"  # over the tenant's limits (streams, length, message rate)
    BAD_REQUEST = "bad_request"  # a malformed config, control or request
    BAD_AUDIO = "bad_audio"  # audio that cannot be decoded
    ADAPTER = "adapter"  # the tenant's adapter is missing, invalid or cannot be loaded
    MODEL = "model"  # the tenant's model version is missing from the store, damaged, or fails to load
    UNAVAILABLE = "unavailable"  # no Triton instance can take or continue the stream
    CAPACITY = "capacity"  # the model instance has no free stream slot: try again later
    NO_STATE = "no_state"  # the model holds no state for the sequence (never started, or swept)
    IDLE = "idle"  # the client sent nothing for too long
    SLOW_CLIENT = "slow_client"  # the client did not read its results
    INTERNAL = "internal"  # a bug or an engine failure
    NOT_FOUND = "not_found"  # an HTTP request for a model (or path) that does not exist for the tenant
    TOO_LARGE = "too_large"  # an HTTP upload over the gateway's size limit, or audio over the tenant's length


@dataclass(frozen=True)
class Wire:
    """One code on each protocol: WebSocket close code, gRPC status name, HTTP status."""

    ws_close: int
    grpc_status: str  # a grpc.StatusCode member name (no grpc import here)
    http_status: int


WIRE: dict[ErrorCode, Wire] = {
    ErrorCode.UNAUTHENTICATED: Wire(1008, "UNAUTHENTICATED", 401),
    ErrorCode.LIMIT: Wire(1008, "RESOURCE_EXHAUSTED", 429),
    ErrorCode.BAD_REQUEST: Wire(1008, "INVALID_ARGUMENT", 400),
    ErrorCode.BAD_AUDIO: Wire(1003, "INVALID_ARGUMENT", 400),
    ErrorCode.ADAPTER: Wire(1011, "FAILED_PRECONDITION", 409),
    ErrorCode.MODEL: Wire(1011, "FAILED_PRECONDITION", 409),
    ErrorCode.UNAVAILABLE: Wire(1013, "UNAVAILABLE", 503),
    ErrorCode.CAPACITY: Wire(1013, "RESOURCE_EXHAUSTED", 503),
    ErrorCode.NO_STATE: Wire(1011, "FAILED_PRECONDITION", 409),
    ErrorCode.IDLE: Wire(1001, "DEADLINE_EXCEEDED", 408),
    ErrorCode.SLOW_CLIENT: Wire(1008, "RESOURCE_EXHAUSTED", 429),
    ErrorCode.INTERNAL: Wire(1011, "INTERNAL", 500),
    ErrorCode.NOT_FOUND: Wire(1008, "NOT_FOUND", 404),
    ErrorCode.TOO_LARGE: Wire(1009, "RESOURCE_EXHAUSTED", 413),
}

_TAG = re.compile(r"\[([a-z_]+)\] ")


def tagged(code: ErrorCode, message: str) -> str:
    """``message`` with ``code`` in front, as the Triton model sends it."""
    return f"[{ErrorCode(code).value}] {message}"


def split_tag(message: str) -> tuple[ErrorCode | None, str]:
    """The code and the message of a :func:`tagged` message; ``(None, message)`` for one without a
    known tag (an error of Triton itself, or of the transport)."""
    m = _TAG.match(message)
    if m is None:
        return None, message
    try:
        return ErrorCode(m.group(1)), message[m.end():]
    except ValueError:
        return None, message
