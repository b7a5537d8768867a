"""One HTTP/1.1 exchange (request, streamed body, response) on a connection of the gateway's port.

The port's sniffer (:mod:`brogue.server.http_front`) hands a connection whose request is not for the
WebSocket layer to an :class:`HttpConnection`: an asyncio protocol that parses the request with
``h11`` and runs the app (``await app(conn)``) as a task once the request head is in. The app reads
the body as it arrives (:meth:`HttpConnection.receive`: bounded buffering, reading pauses when the
app falls behind) and answers with one response (:meth:`~HttpConnection.respond`) or a streamed one
(:meth:`~HttpConnection.start`, :meth:`~HttpConnection.send`, :meth:`~HttpConnection.end`; chunked).

After the exchange the connection is given back to the port (``port.release``): with keep-alive and
the request fully read, the port sniffs the next request on it (it may be for the WebSocket layer);
otherwise it is closed. An app that answers before reading the whole body (a refusal: 401, 413,
429, ...) gets ``Connection: close``, and the rest of the body is read and dropped for a while
("lingering close", bounded in bytes and time) so that the client, still sending, reads the
response instead of a reset. A client that asked ``Expect: 100-continue`` gets its ``100`` when the
app first reads the body, so a refusal before that costs no upload at all.

If the client goes away, the app's task is cancelled (a stream in it ends at once).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass
from http import HTTPStatus
from urllib.parse import parse_qs, urlsplit

import h11

log = logging.getLogger(__name__)

__all__ = ["ClientGone", "HttpConnection", "HttpLimits", "Request"]

SERVER_HEADER = "brogue"
MAX_HEAD_BYTES = 16 << 10  # request line and headers
BODY_BUFFER_BYTES = 1 << 20  # body bytes held for the app before reading pauses
EXTRA_BYTES = 64 << 10  # bytes past the body (a pipelined request) held before reading pauses


@dataclass(frozen=True)
class HttpLimits:
    head_seconds: float = 10.0  # from the hand-off to a complete request head
    send_seconds: float = 30.0  # a write blocked this long (the client reads nothing) drops the client
    linger_seconds: float = 30.0  # after an early response, how long the rest of the body is read and dropped
    linger_bytes: int = 256 << 20  # ... and how much of it


def _reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""


class ClientGone(Exception):
    """The client closed the connection, or stopped reading."""


class BadBody(Exception):
    """The request body is malformed (bad chunked encoding, a short body): h11's message."""


@dataclass(frozen=True)
class Request:
    method: str
    target: str
    headers: dict  # lower-case name -> value (repeated headers joined with ", ")
    http_version: str

    @property
    def path(self) -> str:
        return urlsplit(self.target).path

    @property
    def query(self) -> dict[str, list[str]]:
        return parse_qs(urlsplit(self.target).query)

    def header(self, name: str, default: str | None = None) -> str | None:
        return self.headers.get(name.lower(), default)

    @classmethod
    def from_h11(cls, ev: h11.Request) -> "Request":
        headers: dict[str, str] = {}
        for name, value in ev.headers:
            k, v = name.decode("latin-1").lower(), value.decode("latin-1")
            headers[k] = f"{headers[k]}, {v}" if k in headers else v
        return cls(ev.method.decode("ascii"), ev.target.decode("latin-1"), headers, ev.http_version.decode("ascii"))


class HttpConnection(asyncio.Protocol):
    """See the module docstring. ``port`` has ``release(conn, transport, leftover)`` (``leftover``:
    the bytes already received of the next request, or None when the transport was closed) and
    ``closing`` (True once the server is shutting down: no keep-alive then)."""

    def __init__(self, app, port, limits: HttpLimits = HttpLimits()):
        self.app, self.port, self.limits = app, port, limits
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
        self.transport: asyncio.Transport | None = None
        self.request: Request | None = None
        self.task: asyncio.Task | None = None
        self.state = "head"  # head -> app -> (linger) -> done
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._body_done = False
        self._body_error: str | None = None
        self._extra = 0
        self._wake = asyncio.Event()
        self._writable = asyncio.Event()
        self._writable.set()
        self._gone = False
        self._paused = False
        self._timer: asyncio.TimerHandle | None = None
        self._lingered = 0
        self._expects_100 = False  # the client waits for "100 Continue" before it sends the body
        self._sent_100 = False

    # -- asyncio.Protocol ------------------------------------------------------------------------

    def connection_made(self, transport) -> None:
        self.transport = transport
        self._timer = asyncio.get_running_loop().call_later(self.limits.head_seconds, self._head_timeout)

    def data_received(self, data: bytes) -> None:
        if self.state == "done":
            return
        if self.h11.their_state is h11.DONE:
            self._extra += len(data)
            if self._extra > EXTRA_BYTES:
                self._pause()
        if self.state == "linger":
            self._lingered += len(data)
        self.h11.receive_data(data)
        self._pump()

    def eof_received(self):
        self._gone_now()
        return None  # the transport closes itself

    def connection_lost(self, exc) -> None:
        self._gone_now()
        if self.task is None or self.task.done():
            self._finish(None)

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    # -- parsing ---------------------------------------------------------------------------------

    def _pump(self) -> None:
        while True:
            try:
                ev = self.h11.next_event()
            except h11.RemoteProtocolError as e:
                if self.state == "head":
                    self._refuse(e.error_status_hint, str(e))
                elif self.state == "linger":
                    self._close()
                else:
                    self._body_error = str(e)
                break
            if ev is h11.NEED_DATA or ev is h11.PAUSED:
                break
            if isinstance(ev, h11.Request):
                self._cancel_timer()
                self.request = Request.from_h11(ev)
                self._expects_100 = self.h11.they_are_waiting_for_100_continue
                self.state = "app"
                self.task = asyncio.get_running_loop().create_task(self._run())
            elif isinstance(ev, h11.Data):
                if self.state == "app":
                    self._chunks.append(bytes(ev.data))
                    self._buffered += len(ev.data)
                    if self._buffered > BODY_BUFFER_BYTES:
                        self._pause()
            elif isinstance(ev, h11.EndOfMessage):
                self._body_done = True
                if self.state == "linger":
                    self._close()
                    break
            elif isinstance(ev, h11.ConnectionClosed):
                self._gone_now()
                break
        if self.state == "linger" and self._lingered > self.limits.linger_bytes:
            self._close()
        self._wake.set()

    def _refuse(self, status: int, message: str) -> None:
        """A request head h11 cannot parse: a plain-text error, then close."""
        self._cancel_timer()
        body = f"{message}\n".encode()
        try:
            out = self.h11.send(h11.Response(status_code=status, reason=_reason(status), headers=[
                ("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body))),
                ("Connection", "close"), ("Server", SERVER_HEADER)]))
            out += self.h11.send(h11.Data(data=body)) + self.h11.send(h11.EndOfMessage())
            self.transport.write(out)
        except h11.LocalProtocolError:
            pass
        self._close()

    def _head_timeout(self) -> None:
        self._timer = None
        if self.state == "head":
            self._refuse(408, "request head not received in time")

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _pause(self) -> None:
        if not self._paused and self.transport is not None and not self._gone:
            self._paused = True
            self.transport.pause_reading()

    def _resume(self) -> None:
        if self._paused and self.transport is not None and not self._gone:
            self._paused = False
            self.transport.resume_reading()

    def _gone_now(self) -> None:
        self._gone = True
        self._cancel_timer()
        self._wake.set()
        self._writable.set()
        if self.task is not None and not self.task.done() and self.state == "app":
            self.task.cancel()

    # -- the app's side --------------------------------------------------------------------------

    @property
    def body_done(self) -> bool:
        return self._body_done

    async def receive(self, timeout: float) -> bytes | None:
        """The next piece of the body, or None at its end. Raises :class:`ClientGone`,
        :class:`BadBody`, or ``asyncio.TimeoutError`` when nothing came for ``timeout`` seconds."""
        if self.h11.they_are_waiting_for_100_continue and self.h11.our_state is h11.SEND_RESPONSE:
            self._write(self.h11.send(h11.InformationalResponse(status_code=100, reason=b"Continue", headers=[])))
            self._sent_100 = True
        while True:
            if self._chunks:
                data = self._chunks.popleft()
                self._buffered -= len(data)
                if self._buffered <= BODY_BUFFER_BYTES // 2:
                    self._resume()
                return data
            if self._body_error is not None:
                raise BadBody(self._body_error)
            if self._body_done:
                return None
            if self._gone:
                raise ClientGone("the client closed the connection")
            self._wake.clear()
            await asyncio.wait_for(self._wake.wait(), timeout)

    def _headers(self, headers, close: bool) -> list[tuple[str, str]]:
        out = [("Server", SERVER_HEADER), *headers]
        if close or not self._body_done or self.port.closing:
            out.append(("Connection", "close"))
        return out

    async def respond(self, status: int, headers: list[tuple[str, str]], body: bytes, close: bool = False) -> None:
        """The whole response. Sent with ``Connection: close`` when the body was not read to its end."""
        head = h11.Response(status_code=status, reason=_reason(status), headers=self._headers(
            [*headers, ("Content-Length", str(len(body)))], close))
        out = self.h11.send(head) + self.h11.send(h11.Data(data=body)) + self.h11.send(h11.EndOfMessage())
        self._write(out)
        await self._drain()

    async def start(self, status: int, headers: list[tuple[str, str]]) -> None:
        """Start a streamed response (chunked for HTTP/1.1 clients): then :meth:`send`, :meth:`end`."""
        self._write(self.h11.send(h11.Response(status_code=status, reason=_reason(status),
                                               headers=self._headers(headers, False))))
        await self._drain()

    async def send(self, data: bytes) -> None:
        if data:
            self._write(self.h11.send(h11.Data(data=data)))
            await self._drain()

    async def end(self) -> None:
        self._write(self.h11.send(h11.EndOfMessage()))
        await self._drain()

    @property
    def response_started(self) -> bool:
        return self.h11.our_state is not h11.SEND_RESPONSE

    def _write(self, data: bytes) -> None:
        if self._gone or self.transport is None or self.transport.is_closing():
            raise ClientGone("the client closed the connection")
        self.transport.write(data)

    async def _drain(self) -> None:
        if self._writable.is_set():
            return
        try:
            await asyncio.wait_for(self._writable.wait(), self.limits.send_seconds)
        except asyncio.TimeoutError:
            self.transport.abort()
            raise ClientGone(f"the client read nothing for {self.limits.send_seconds:g} s") from None
        if self._gone:
            raise ClientGone("the client closed the connection")

    # -- the exchange's end ----------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            await self.app(self)
        except (ClientGone, asyncio.CancelledError):
            pass
        except Exception:  # a bug costs this request, never the gateway
            log.exception("HTTP %s %s failed", self.request.method, self.request.path)
            if not self.response_started and not self._gone:
                try:
                    await self.respond(500, [("Content-Type", "text/plain; charset=utf-8")], b"internal error\n",
                                       close=True)
                except Exception:  # noqa: BLE001 - the client is gone or the connection broken
                    pass
        finally:
            self._after()

    def _after(self) -> None:
        if self._gone or self.transport is None:
            self._finish(None)
            return
        h = self.h11
        if h.our_state is not h11.DONE and h.our_state is not h11.MUST_CLOSE:
            self._close()  # the response did not complete (an error mid-stream): the client must see it cut
        elif h.their_state is h11.SEND_BODY:
            if self._expects_100 and not self._sent_100:
                self._close()  # refused before "100 Continue": the client sends no body
            else:
                self._linger()
        elif h.our_state is h11.DONE and h.their_state is h11.DONE and not self.port.closing:
            self.state = "done"
            self._resume()
            leftover = h.trailing_data[0]
            transport, self.transport = self.transport, None
            self.port.release(self, transport, leftover)
        else:
            self._close()

    def _linger(self) -> None:
        """Read and drop the rest of the body, then close (see the module docstring)."""
        self.state = "linger"
        self._chunks.clear()
        self._resume()
        self._timer = asyncio.get_running_loop().call_later(self.limits.linger_seconds, self._close)
        self._pump()

    def _close(self) -> None:
        self._cancel_timer()
        if self.state != "done":
            self.state = "done"
            if self.transport is not None:
                self.transport.close()
            self._finish(None)

    def close_idle(self) -> None:
        """Server shutdown: close the connection unless its app is running."""
        if self.state in ("head", "linger"):
            self._close()

    def abort(self) -> None:
        """Server shutdown, time is up: cut the connection and cancel the app."""
        if self.task is not None and not self.task.done():
            self.task.cancel()
        if self.transport is not None:
            self.transport.abort()

    def _finish(self, _leftover) -> None:
        self.state = "done"
        self.port.release(self, None, None)
