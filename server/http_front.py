"""The gateway's HTTP port: the WebSocket layer and the OpenAI-compatible API on one port.

``websockets`` serves ``/v1/stream``, the browser page, ``/metrics`` and the health checks
(:class:`~brogue.server.websocket.WebSocketFrontEnd`), but it parses GET requests only. So every
accepted connection (after TLS, when configured: the sniffer sees decrypted bytes) starts with a
:class:`Sniffer`: a tiny protocol that buffers the request line, then switches the transport to

- an HTTP/1.1 exchange (:class:`~brogue.server.openai.http11.HttpConnection`) for the OpenAI routes
  (``/v1/audio/...``, ``/v1/models``) and for any method other than GET (which websockets would
  refuse with a logged error; the API answers 404 or 405 instead), or
- a websockets ``ServerConnection``, built exactly as ``websockets.asyncio.server.serve`` builds it
  (same frame size, keepalive, queue and write limits, compression), for everything else.

The WebSocket side uses websockets' public API for custom servers: a ``Server`` instance, one
``ServerProtocol`` + ``ServerConnection`` per connection, ``loop.create_server`` called here, then
``Server.wrap``. After an API exchange with keep-alive, the connection gets a new sniffer, so its
next request may go either way.

:class:`HttpPort` mirrors what the gateway's drain needs of a websockets ``Server``: ``close``
(``close_connections=False``: stop listening, let live requests and streams finish) and
``wait_closed``.
"""

from __future__ import annotations

import asyncio
import logging
import ssl as ssl_lib
import sys
from urllib.parse import urlsplit

from websockets.asyncio.server import Server, ServerConnection
from websockets.extensions.permessage_deflate import enable_server_permessage_deflate
from websockets.server import ServerProtocol

from .openai.http11 import HttpConnection, HttpLimits

log = logging.getLogger(__name__)

__all__ = ["HttpPort", "Sniffer", "is_api_request", "serve_http_port"]

MAX_REQUEST_LINE = 8192  # websockets' own limit on a header line
OPEN_SECONDS = 10.0  # websockets' open_timeout: a connection must send its request line within this
CLOSE_SECONDS = 10.0  # websockets' close_timeout (and the TLS shutdown timeout)
API_PREFIXES = ("/v1/audio/", "/v1/models")


def is_api_request(method: str, target: str) -> bool:
    """Whether a request goes to the OpenAI API (else to the WebSocket layer)."""
    path = urlsplit(target).path
    return method != "GET" or path == "/v1/models" or path.startswith(("/v1/models/", "/v1/audio/"))


class Sniffer(asyncio.Protocol):
    """The first protocol of every connection (and of the next request after a keep-alive API
    exchange): buffers until the request line is complete, then hands the transport and the bytes
    to the API or to websockets."""

    def __init__(self, port: "HttpPort"):
        self.port = port
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.port._sniffers.add(self)
        self._timer = asyncio.get_running_loop().call_later(OPEN_SECONDS, self.close)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        head = self.buffer.lstrip(b"\r\n")  # RFC 9112: empty lines before a request line are ignored
        end = head.find(b"\n")
        if end < 0:
            if len(head) > MAX_REQUEST_LINE:
                self._switch(self.port.ws_connection())  # websockets refuses it, as it always did
            return
        parts = head[:end].decode("latin-1").split()
        api = len(parts) == 3 and is_api_request(parts[0], parts[1])
        self._switch(self.port.api_connection() if api else self.port.ws_connection())

    def eof_received(self):
        return None  # closes the transport

    def connection_lost(self, exc) -> None:
        self._done()

    def close(self) -> None:
        """No request line in time, or the server is shutting down: close the idle connection."""
        self._done()
        if self.transport is not None:
            self.transport.close()

    def _switch(self, protocol: asyncio.Protocol) -> None:
        self._done()
        transport, self.transport = self.transport, None
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        data, self.buffer = self.buffer, b""
        protocol.data_received(data)

    def _done(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.port._sniffers.discard(self)


class HttpPort:
    """The listening port: the websockets ``Server`` (its WebSocket connections) and the API's HTTP
    connections. See the module docstring."""

    def __init__(self, ws_server: Server, api, *, max_size: int | None, ping_interval: float | None,
                 ping_timeout: float | None, logger=None, http_limits: HttpLimits = HttpLimits()):
        self.ws = ws_server
        self.api = api
        self.http_limits = http_limits
        self.closing = False
        self._ws_options = dict(max_size=max_size, ping_interval=ping_interval, ping_timeout=ping_timeout,
                                logger=logger)
        self._extensions = enable_server_permessage_deflate(None)  # serve()'s default compression
        self._sniffers: set[Sniffer] = set()
        self._api_conns: set[HttpConnection] = set()

    # -- protocols -------------------------------------------------------------------------------

    def sniffer(self) -> Sniffer:
        return Sniffer(self)

    def ws_connection(self) -> ServerConnection:
        """A websockets connection, as ``websockets.asyncio.server.serve``'s factory makes one."""
        o = self._ws_options
        protocol = ServerProtocol(origins=None, extensions=self._extensions, subprotocols=None,
                                  select_subprotocol=None, max_size=o["max_size"], logger=o["logger"])
        return ServerConnection(protocol, self.ws, ping_interval=o["ping_interval"], ping_timeout=o["ping_timeout"],
                                close_timeout=CLOSE_SECONDS, max_queue=16, write_limit=2 ** 15)

    def api_connection(self) -> HttpConnection:
        conn = HttpConnection(self.api, self, self.http_limits)
        self._api_conns.add(conn)
        return conn

    def release(self, conn: HttpConnection, transport, leftover: bytes | None) -> None:
        """An API exchange is over: sniff the connection's next request (keep-alive), or forget it."""
        self._api_conns.discard(conn)
        if transport is None:
            return
        if self.closing:
            transport.close()
            return
        sniffer = self.sniffer()
        transport.set_protocol(sniffer)
        sniffer.connection_made(transport)
        if leftover:
            sniffer.data_received(leftover)

    # -- what the drain needs (websockets.asyncio.server.Server's API) ----------------------------

    @property
    def sockets(self):
        return self.ws.sockets

    def close(self, close_connections: bool = True) -> None:
        """Stop listening; close idle connections; with ``close_connections``, also cut the live
        ones (API requests are cancelled, WebSocket streams closed 1001)."""
        self.closing = True
        self.ws.close(close_connections)
        for s in list(self._sniffers):
            s.close()
        for c in list(self._api_conns):
            c.abort() if close_connections else c.close_idle()

    async def wait_closed(self) -> None:
        """Until every WebSocket handler and API request has ended."""
        await self.ws.wait_closed()
        while True:
            tasks = [c.task for c in self._api_conns if c.task is not None and not c.task.done()]
            if not tasks:
                return
            await asyncio.wait(tasks)


async def serve_http_port(ws_handler, process_request, api, host: str, port: int, *, max_size: int | None,
                          ping_interval: float | None, ping_timeout: float | None,
                          ssl: ssl_lib.SSLContext | None = None, logger=None,
                          http_limits: HttpLimits = HttpLimits()) -> HttpPort:
    """Listen on ``host:port``: WebSocket connections get ``ws_handler`` after ``process_request``
    (as with ``websockets.asyncio.server.serve``), API requests go to ``api`` (``await api(conn)``)."""
    ws_server = Server(ws_handler, process_request=process_request, open_timeout=OPEN_SECONDS, logger=logger)
    http = HttpPort(ws_server, api, max_size=max_size, ping_interval=ping_interval, ping_timeout=ping_timeout,
                    logger=logger, http_limits=http_limits)
    kwargs = {}
    if ssl is not None:  # as serve() sets them
        kwargs["ssl_handshake_timeout"] = OPEN_SECONDS
        if sys.version_info[:2] >= (3, 11):
            kwargs["ssl_shutdown_timeout"] = CLOSE_SECONDS
    server = await asyncio.get_running_loop().create_server(http.sniffer, host, port, ssl=ssl, **kwargs)
    ws_server.wrap(server)
    return http
