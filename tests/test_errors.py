"""Error codes: one mapping per protocol, and the tag that carries a code through Triton."""

from __future__ import annotations

import grpc
import pytest

from brogue.errors import WIRE, ErrorCode, split_tag, tagged
from brogue.server.gateway import StreamError


def test_every_code_maps_to_a_close_code_a_grpc_status_and_an_http_status():
    assert set(WIRE) == set(ErrorCode)
    for code, wire in WIRE.items():
        assert 1000 <= wire.ws_close <= 4999 and 400 <= wire.http_status <= 599, code
        assert isinstance(getattr(grpc.StatusCode, wire.grpc_status), grpc.StatusCode), code
    # what clients rely on: "try again later" for a full server, refusals for bad input
    assert WIRE[ErrorCode.CAPACITY].ws_close == WIRE[ErrorCode.UNAVAILABLE].ws_close == 1013
    assert WIRE[ErrorCode.CAPACITY].grpc_status == "RESOURCE_EXHAUSTED"
    assert WIRE[ErrorCode.UNAUTHENTICATED].http_status == 401


@pytest.mark.parametrize("code", list(ErrorCode))
def test_a_tagged_message_gives_back_its_code_and_message(code):
    message = "sequence 7 has no state: [not a tag] send START first"
    assert split_tag(tagged(code, message)) == (code, message)


@pytest.mark.parametrize("message", ["must specify the start flag", "[nosuch] code", "[capacity]no space",
                                     " [capacity] leading space", ""])
def test_messages_without_a_known_tag_have_no_code(message):
    assert split_tag(message) == (None, message)


def test_a_stream_error_takes_known_codes_only():
    assert StreamError("capacity", "full").code is ErrorCode.CAPACITY
    assert f"{ErrorCode.CAPACITY}" == "capacity"  # the JSON code and the metric label
    with pytest.raises(ValueError):
        StreamError("no_such_code", "x")
