"""The WebSocket front end (``/v1/stream``) and the gateway's small HTTP surface.

Protocol (docs/websocket.md): the API key comes with the handshake (``Authorization: Bearer KEY``,
``X-Api-Key``, or ``?api_key=`` for browsers) and is checked before the upgrade; the first message
is a JSON config; then binary audio frames and JSON controls (``flush``, ``close``); results come
back as JSON. Everything stream-related is :meth:`Gateway.run_stream`; this module parses, frames
and enforces the per-connection limits (frame size, message rate, idle time, a client too slow to
read its results).

HTTP on the same port: ``/`` (the browser page), ``/metrics`` (Prometheus), ``/livez`` (the process
answers), ``/readyz`` and ``/healthz`` (200 only while a Triton instance is ready with the model).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import time
import weakref
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from urllib.parse import parse_qs, urlparse

from prometheus_client import CONTENT_TYPE_LATEST
from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from brogue.audio.codecs import ENCODINGS, SAMPLE_RATES
from brogue.boosting import validate
from brogue.errors import WIRE, ErrorCode

from .endpointing import EndpointingConfig
from .gateway import FLUSH, STOPPED, Gateway, StreamError
from .session import SessionConfig

log = logging.getLogger(__name__)

PAGE_DIR = Path(__file__).resolve().parent.parent / "clients" / "web"
_ENDPOINTING_KEYS = {f for f in EndpointingConfig.__dataclass_fields__}


@dataclass(frozen=True)
class ConnectionLimits:
    max_frame_bytes: int = 1 << 20  # larger frames are refused by the WebSocket layer (close 1009)
    max_messages_per_second: float = 200.0
    idle_seconds: float = 30.0
    config_seconds: float = 10.0
    send_seconds: float = 10.0  # a client that does not read its results for this long is dropped
    # WebSocket ping every keepalive_seconds; no pong within as long again closes the connection
    # (1011, counted as slow_client): a client that stops reading also stops answering pings.
    keepalive_seconds: float = 20.0
    # Kernel send buffer of each connection: with the library's 32 KiB write limit, what a client that
    # stops reading can make the gateway hold (results are small: 64 KiB is seconds of them).
    send_buffer_bytes: int = 64 << 10


class QuietHandshakes(logging.Filter):
    """For the WebSocket server's logger: a connection that closes before or during its opening
    handshake (a TCP health check, a port scanner, a client that gave up) is one DEBUG line, not an
    ERROR with a traceback. Other handshake failures keep their ERROR."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.getMessage() != "opening handshake failed" or not record.exc_info:
            return True
        err = record.exc_info[1]
        causes = {type(err), type(err.__cause__), type(err.__context__)}
        if causes & {EOFError, ConnectionResetError, BrokenPipeError, asyncio.IncompleteReadError}:
            log.debug("connection closed during the opening handshake: %s", err)
            return False
        return True


def handshake_logger() -> logging.Logger:
    """The logger the WebSocket server gets: ``websockets.server`` with :class:`QuietHandshakes`."""
    logger = logging.getLogger("websockets.server")
    if not any(isinstance(f, QuietHandshakes) for f in logger.filters):
        logger.addFilter(QuietHandshakes())
    return logger


def parse_config(text) -> SessionConfig:
    """The first message: ``{"type": "config", ...}`` -> :class:`SessionConfig`; ValueError says why."""
    if not isinstance(text, str):
        raise ValueError("the first message must be a JSON text config, not binary audio")
    try:
        msg = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"config is not valid JSON: {e}") from None
    if not isinstance(msg, dict) or msg.get("type") != "config":
        raise ValueError('the first message must be {"type": "config", ...}')
    unknown = set(msg) - {"type", "sample_rate", "encoding", "interim_results", "endpointing", "latency", "boost"}
    if unknown:
        raise ValueError(f"unknown config field(s): {', '.join(sorted(unknown))}")
    rate = msg.get("sample_rate", 16000)
    if not isinstance(rate, int) or isinstance(rate, bool) or rate not in SAMPLE_RATES:
        raise ValueError(f"sample_rate must be one of {', '.join(map(str, SAMPLE_RATES))}, not {rate!r}")
    enc = msg.get("encoding", "pcm16")
    if enc not in ENCODINGS:
        raise ValueError(f"encoding must be one of {', '.join(ENCODINGS)}, not {enc!r}")
    interim = msg.get("interim_results", True)
    if not isinstance(interim, bool):
        raise ValueError("interim_results must be true or false")
    ep = msg.get("endpointing") or {}
    if not isinstance(ep, dict) or set(ep) - _ENDPOINTING_KEYS:
        raise ValueError(f"endpointing must be an object with keys among {', '.join(sorted(_ENDPOINTING_KEYS))}")
    latency = msg.get("latency")
    if latency is not None and not isinstance(latency, str):
        raise ValueError("latency must be a string (a latency name of the model) or null")
    boost = msg.get("boost") or []
    if not isinstance(boost, list):
        raise ValueError('boost must be a list of phrases: "text" or {"phrase": "text", "boost": 8}')
    return SessionConfig(rate, enc, interim, EndpointingConfig(**ep), latency, validate(boost))


def result_message(ev) -> dict:
    return {"type": ev.kind, "utterance_id": ev.utterance_id, "transcript": ev.transcript,
            "words": [w.as_dict() for w in ev.words], "start": ev.start, "end": ev.end,
            **({"stable": ev.stable} if ev.kind == "partial" else {})}


def api_key_of(request: Request) -> str | None:
    auth = request.headers.get("Authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    if request.headers.get("X-Api-Key"):
        return request.headers["X-Api-Key"].strip()
    keys = parse_qs(urlparse(request.path).query).get("api_key")
    return keys[0] if keys else None


class WebSocketFrontEnd:
    def __init__(self, gateway: Gateway, limits: ConnectionLimits = ConnectionLimits()):
        self.gateway, self.limits = gateway, limits
        # The tenant authenticated at the handshake, per connection (gone with the connection).
        self._tenants: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    # -- HTTP, before any upgrade --------------------------------------------------------------

    def process_request(self, connection: ServerConnection, request: Request):
        path = urlparse(request.path).path
        if path == "/v1/stream":
            try:
                self._tenants[connection] = self.gateway.authenticate(api_key_of(request))
            except StreamError as e:
                self.gateway.metrics.errors.labels(e.code, "ws").inc()
                return connection.respond(HTTPStatus(WIRE[e.code].http_status), f"{e}\n")
            return None
        if path == "/metrics":
            return Response(200, "OK", Headers([("Content-Type", CONTENT_TYPE_LATEST)]), self.gateway.metrics.render())
        if path == "/livez":  # the gateway process answers
            return connection.respond(HTTPStatus.OK, "ok\n")
        if path in ("/readyz", "/healthz"):  # a Triton instance is ready with the gateway's model
            if self.gateway.ready:
                return connection.respond(HTTPStatus.OK, "ready\n")
            return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, "no Triton instance is ready\n")
        if path in ("/", "/index.html") or path.startswith("/static/"):
            return self._static(connection, "index.html" if path in ("/", "/index.html") else path[len("/static/"):])
        return connection.respond(HTTPStatus.NOT_FOUND, "not found\n")

    def _static(self, connection, name: str):
        file = (PAGE_DIR / name).resolve()
        if PAGE_DIR.resolve() not in file.parents or not file.is_file():
            return connection.respond(HTTPStatus.NOT_FOUND, "not found\n")
        ctype = {".html": "text/html; charset=utf-8", ".js": "text/javascript", ".css": "text/css"}.get(
            file.suffix, "application/octet-stream")
        return Response(200, "OK", Headers([("Content-Type", ctype), ("Cache-Control", "no-store")]), file.read_bytes())

    # -- one WebSocket stream --------------------------------------------------------------------

    async def handler(self, ws: ServerConnection) -> None:
        tenant = self._tenants.pop(ws, None)
        if tenant is None:
            await ws.close(1008, "not authenticated")
            return
        lim = self.limits
        sock = ws.transport.get_extra_info("socket")
        if sock is not None and lim.send_buffer_bytes:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, lim.send_buffer_bytes)
        try:
            try:
                config = parse_config(await asyncio.wait_for(ws.recv(), lim.config_seconds))
                info = self.gateway.model_info(config.latency, self.gateway.tenant_model(tenant))
            except StreamError as e:
                await self._fail(ws, e)
                return
            except ValueError as e:
                await self._fail(ws, StreamError(ErrorCode.BAD_REQUEST, str(e)))
                return
            except asyncio.TimeoutError:
                await self._fail(ws, StreamError(ErrorCode.IDLE, f"no config within {lim.config_seconds:g} s"))
                return
            self.gateway.require_ready()  # no Triton ready: 1013 (try again later), never "ready" first
            lease = self.gateway.open_lease(tenant)  # over the limit: refused before "ready"
            tenant, model = lease.tenant, None
            try:
                # the tenant's model version, loaded (it may have to make room): refused before "ready"
                model = await self.gateway.acquire_model(tenant)
                info = self.gateway.model_info(config.latency, model)
                await self._send(ws, {"type": "ready", "tenant": tenant.name, "adapter": tenant.adapter or None,
                                      "sample_rate": info.sample_rate, "chunk_ms": round(info.chunk_samples * 1000 / info.sample_rate),
                                      "model": tenant.model or self.gateway.meta.raw.get("name")})
            except BaseException:
                lease.release()
                if model is not None:
                    self.gateway.models.release(model)
                raise
            # aclosing: if the client goes away mid-stream, the stream's cleanup (END to Triton,
            # lease release) runs now, not whenever the abandoned generator is collected
            async with contextlib.aclosing(self.gateway.run_stream(tenant, config, self._inputs(ws), api="ws",
                                                                   lease=lease, model=model)) as results:
                async for ev in results:
                    await self._send(ws, result_message(ev))
            await self._send(ws, {"type": "end"})
            if self.gateway.stopping.done():
                await ws.close(1001, "server shutting down")
            else:
                await ws.close(1000, "stream complete")
        except StreamError as e:
            await self._fail(ws, e)
        except ConnectionClosed as e:
            if e.rcvd is None and e.sent is not None and e.sent.code == 1011:
                # keepalive ping timeout: the client stopped reading (its pongs queue behind unread
                # results) or its network died; either way it is dropped, as a too-slow client
                self.gateway.metrics.errors.labels("slow_client", "ws").inc()
                log.info("client of tenant %s stopped reading (%s): dropped", tenant.name, e.sent.reason)
            else:
                log.info("client of tenant %s went away", tenant.name)
        except Exception as e:  # a bug must cost one stream, with a clear error, never the gateway
            log.exception("stream of tenant %s failed", tenant.name)
            await self._fail(ws, StreamError(ErrorCode.INTERNAL, f"internal error: {type(e).__name__}"))

    async def _inputs(self, ws: ServerConnection):
        lim = self.limits
        window_start, count = time.monotonic(), 0
        while True:
            try:
                msg = await self.gateway.next_input(ws.recv, lim.idle_seconds)  # a lost recv() loses nothing
            except asyncio.TimeoutError:
                raise StreamError(ErrorCode.IDLE, f"no message for {lim.idle_seconds:g} s") from None
            except ConnectionClosed:
                return  # the client closed without a "close" message: treat as end of audio
            if msg is STOPPED:
                return  # the server is shutting down: end of audio, finals follow
            count += 1
            now = time.monotonic()
            if now - window_start >= 1.0:
                window_start, count = now, 1
            if count > lim.max_messages_per_second:
                raise StreamError(ErrorCode.LIMIT, f"more than {lim.max_messages_per_second:g} messages per second")
            if isinstance(msg, bytes):
                yield msg
                continue
            try:
                ctl = json.loads(msg)
            except json.JSONDecodeError:
                raise StreamError(ErrorCode.BAD_REQUEST, "text messages must be JSON controls") from None
            kind = ctl.get("type") if isinstance(ctl, dict) else None
            if kind == "flush":
                yield FLUSH
            elif kind == "close":
                return
            else:
                raise StreamError(ErrorCode.BAD_REQUEST, f"unknown control {kind!r}; use 'flush' or 'close'")

    async def _send(self, ws: ServerConnection, msg: dict) -> None:
        try:
            await asyncio.wait_for(ws.send(json.dumps(msg)), self.limits.send_seconds)
        except asyncio.TimeoutError:
            raise StreamError(ErrorCode.SLOW_CLIENT,
                              f"client did not read results for {self.limits.send_seconds:g} s") from None

    async def _fail(self, ws: ServerConnection, e: StreamError) -> None:
        log.info("stream error (%s): %s", e.code, e)
        self.gateway.metrics.errors.labels(e.code, "ws").inc()
        try:
            await asyncio.wait_for(ws.send(json.dumps({"type": "error", "code": e.code, "message": str(e)})), 2)
            await ws.close(WIRE[e.code].ws_close, e.code)
        except (ConnectionClosed, asyncio.TimeoutError):
            pass
