"""The gateway's side of Triton: one asyncio gRPC stream per sequence, spread over Triton instances.

Triton keeps each stream's state, so a stream stays on the instance that started it.
:class:`TritonPool` picks, for each new stream, the instance with the fewest live sequences among
those not marked down, and gives it a correlation id unique across gateways (random 62-bit base
plus a counter). :class:`Sequence` sends chunks in order and awaits each reply; any failure
(server down, sequence error) raises :class:`TritonUnavailable` or :class:`SequenceError` for that
stream alone.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets

import grpc
import numpy as np
import tritonclient.grpc.aio as aioclient
from tritonclient.utils import InferenceServerException

from brogue.asr_io import MODEL, ChunkReply, parse_reply, request_inputs
from brogue.errors import ErrorCode, split_tag

log = logging.getLogger(__name__)


# gRPC statuses of a stream call that mean the call to Triton broke, not that Triton refused a
# request (the model's refusals come as stream replies, with no status): UNAVAILABLE, and INTERNAL
# "Internal error from Core", which gRPC's C-core gives for a connection torn down mid-call (a killed
# tritonserver). CANCELLED is not one: the gateway cancels the calls of clients that vanish.
TRANSPORT_STATUSES = ("UNAVAILABLE", "INTERNAL")


def _transport_down(status: str, message: str) -> bool:
    """Whether an untagged error says the connection to Triton failed: a gRPC status of
    :data:`TRANSPORT_STATUSES`, or the wording of a connection failure on a stream, whose error
    tritonclient may pass on with no status (C-core's "Internal error from Core" among them: seen
    without a status when a tritonserver was killed under load)."""
    low = message.lower()
    return any(s in status for s in TRANSPORT_STATUSES) or any(
        s in low for s in ("failed to connect", "connection refused", "socket closed", "internal error from core"))


def channel_args(max_backoff_ms: int = 1000) -> list[tuple[str, int]]:
    """tritonclient's default channel options, plus a short reconnect backoff.

    gRPC shares one subchannel (one TCP connection, one backoff state) among all channels to the same
    address with the same options, so every :class:`Sequence` rides the same connection. After Triton
    goes away, that subchannel backs off exponentially (1 s, 1.6 s, 2.6 s, ... up to 120 s by default)
    and fails new streams at once until the next attempt, long after Triton is back. Capping the
    backoff at ``max_backoff_ms`` bounds how long the gateway lags behind a restarted Triton."""
    ka = aioclient.KeepAliveOptions()
    return [
        ("grpc.max_send_message_length", aioclient.MAX_GRPC_MESSAGE_SIZE),
        ("grpc.max_receive_message_length", aioclient.MAX_GRPC_MESSAGE_SIZE),
        ("grpc.keepalive_time_ms", ka.keepalive_time_ms),
        ("grpc.keepalive_timeout_ms", ka.keepalive_timeout_ms),
        ("grpc.keepalive_permit_without_calls", ka.keepalive_permit_without_calls),
        ("grpc.http2.max_pings_without_data", ka.http2_max_pings_without_data),
        ("grpc.initial_reconnect_backoff_ms", min(100, max_backoff_ms)),
        ("grpc.min_reconnect_backoff_ms", min(100, max_backoff_ms)),
        ("grpc.max_reconnect_backoff_ms", max_backoff_ms),
    ]


CHANNEL_ARGS = channel_args()


class TritonUnavailable(ConnectionError):
    """No Triton instance can take or continue the stream."""


class SequenceError(RuntimeError):
    """Triton refused a request of this stream: ``code`` is the model's (an untagged refusal, from
    Triton itself, is ``internal``: the gateway only sends well-formed requests), the message the
    model's without its tag."""

    def __init__(self, code: ErrorCode, message: str):
        super().__init__(message)
        self.code = code


# How Triton answers a request for a model it has not loaded (or no longer has).
_MODEL_GONE = "request for unknown model"

# What Triton's own sequence batcher (not the model, whose errors carry a code) says when a sequence
# it does not know sends a chunk without START: after a Triton restart, for a live stream.
TRITON_UNKNOWN_SEQUENCE = "must specify the start flag"


class ModelMismatch(RuntimeError):
    """A Triton instance serves another model than the one whose vocabulary the gateway decodes with."""


def check_fingerprint(url: str, served: str, expected: str, model_dir: str = "") -> None:
    """Raise :class:`ModelMismatch` unless ``served`` (the fingerprint Triton at ``url`` reported)
    is ``expected`` (the gateway's model.json)."""
    if served == expected:
        return
    ours = f"the gateway's model {model_dir} ({expected})" if model_dir else f"the gateway's model ({expected})"
    if not served:
        raise ModelMismatch(f"Triton at {url} does not report the fingerprint of the model it serves, so it "
                            f"cannot be checked against {ours}: update its asr_streaming model")
    raise ModelMismatch(f"Triton at {url} serves the model with fingerprint {served}, not {ours}: "
                        "serve the same export in both (`brogue serve --model-dir DIR` does)")


_END = object()


class Sequence:
    """One Triton sequence on its own gRPC stream (a tritonclient stream's errors don't say which
    request failed, so sequences never share one), over the pool's channel to its instance."""

    def __init__(self, pool: "TritonPool", url: str, corrid: int, adapter: str, latency: str, timeout: float,
                 boost: str = "", model: str | None = None, fingerprint: str | None = None):
        self.pool, self.url, self.corrid = pool, url, corrid
        self.model = model or pool.model  # the Triton model of the stream's model version
        self.fingerprint = pool.fingerprint if model is None else fingerprint  # its first reply must carry it
        self.adapter, self.latency, self.timeout = adapter, latency, timeout
        self.boost = boost  # brogue.boosting.to_wire of the stream's phrases, sent on START
        self._client = pool.client(url)
        self._requests: asyncio.Queue = asyncio.Queue()
        self._replies = None
        self.started = False
        self.closed = False

    async def _iterate(self):
        while True:
            item = await self._requests.get()
            if item is _END:
                return
            yield item

    async def send(self, audio: np.ndarray, *, end: bool = False) -> ChunkReply:
        """Send one chunk (float32, 16 kHz) and await its reply."""
        if self.closed:
            raise SequenceError(f"sequence {self.corrid} is closed")
        if self._replies is None:
            self._replies = self._client.stream_infer(self._iterate())
        start = not self.started
        self.started = True
        await self._requests.put({
            "model_name": self.model,
            "inputs": request_inputs(np.asarray(audio, np.float32), start=start, adapter=self.adapter,
                                     latency=self.latency, boost=self.boost),
            "sequence_id": self.corrid,
            "sequence_start": start,
            "sequence_end": end,
        })
        try:
            result, error = await asyncio.wait_for(self._replies.__anext__(), self.timeout)
        except asyncio.CancelledError:  # the client went away mid-request: not Triton's fault
            # The stream's reply iterator is broken now; end the sequence on a call of its own, so
            # Triton frees the state at once (not at its idle sweep). Detached: we are cancelled.
            self.pool._detach(self._end_detached())
            await self.close()
            raise
        except (StopAsyncIteration, asyncio.TimeoutError) as e:
            await self.close()
            self.pool.mark_down(self.url)
            raise TritonUnavailable(f"Triton at {self.url} stopped answering stream {self.corrid}: "
                                    f"{type(e).__name__}") from None
        except (InferenceServerException, grpc.RpcError) as e:
            await self.close()
            raise self._classify(e) from None
        if error is not None:
            await self.close()
            raise self._classify(error)
        if end:
            await self.close()
        reply = parse_reply(result)
        if start and self.fingerprint is not None:
            try:
                check_fingerprint(self.url, reply.model_fingerprint, self.fingerprint)
            except ModelMismatch:
                await self.close()
                raise
        return reply

    async def _end_detached(self) -> None:
        try:
            await self.pool.client(self.url).infer(
                self.model, request_inputs(np.zeros(0, np.float32), start=False, adapter=self.adapter,
                                                latency=self.latency),
                sequence_id=self.corrid, sequence_end=True, client_timeout=self.timeout)
        except Exception as e:  # noqa: BLE001 - best effort: Triton's idle sweep is the fallback
            log.info("ending abandoned sequence %d on %s failed: %s", self.corrid, self.url, e)

    def _classify(self, error) -> Exception:
        if isinstance(error, grpc.RpcError):
            msg, status = error.details() or str(error), str(error.code())
        elif isinstance(error, InferenceServerException):
            msg, status = error.message(), str(error.status())
        else:
            msg, status = str(error), ""
        code, text = split_tag(msg)
        if code is None and self.model != self.pool.model and _MODEL_GONE in msg.lower():
            # a model version unloaded under the stream (its Triton restarted): load it again next time
            self.pool.model_gone(self.url, self.model)
            return TritonUnavailable(f"Triton at {self.url} no longer serves {self.model}: {msg}")
        if code is None and _transport_down(status, msg):
            self.pool.mark_down(self.url)
            return TritonUnavailable(f"Triton at {self.url} is unavailable: {msg}")
        if self.started and (code is ErrorCode.NO_STATE or (code is None and TRITON_UNKNOWN_SEQUENCE in msg)):
            # Triton restarted (or swept the sequence) under a live stream: its state is gone
            return TritonUnavailable(f"Triton at {self.url} lost this stream's state (restarted?): {text}")
        # Untagged and not the transport: Triton itself refused what the gateway sent, a bug here.
        return SequenceError(code or ErrorCode.INTERNAL, text)

    async def close(self) -> None:
        """Release the gRPC stream (Triton frees the state on END, or sweeps it after idling); the
        channel stays, the pool's."""
        if self.closed:
            return
        self.closed = True
        self.pool._release(self.url)
        await self._requests.put(_END)
        if self._replies is not None:
            self._replies.cancel()


class TritonPool:
    """Triton instances serving ``model``; :meth:`open` starts a sequence on the least loaded ready one.

    Readiness: :meth:`watch` asks every instance, every ``interval`` seconds, whether the model is
    ready (Triton's own health API). An instance that stops answering, or a stream that finds it gone
    (:meth:`mark_down`), is not ready at once; when it answers again it is admitted only after it
    proves it serves :attr:`fingerprint` (an empty sequence) and its bank has been warmed with the
    adapters ``warm()`` names (so a restarted Triton has them loaded before streams need them).
    ``on_change(ready_urls)`` is called on every change. New streams go to ready instances only.

    Every call to an instance (streams, probes, the model checks) goes over one tritonclient client
    per instance (:meth:`client`: one gRPC channel), made on first use in the running event loop;
    :meth:`close` closes them.
    """

    def __init__(self, urls: list[str], *, model: str = MODEL, timeout: float = 30.0,
                 fingerprint: str | None = None):
        if not urls:
            raise ValueError("at least one Triton URL is needed")
        self.urls, self.model, self.timeout = list(urls), model, timeout
        self.fingerprint = fingerprint  # every stream's first reply must carry it (None: unchecked)
        self.live = {u: 0 for u in self.urls}
        self.ready = {u: True for u in self.urls}  # until check_models or the first probe says otherwise
        self.warm = lambda: []  # adapter references to load into a (re)joining instance's bank
        self.on_change = lambda ready_urls: None
        self.on_admit = lambda url: None  # an instance (re)joins: the models it had loaded are gone
        self.model_gone = lambda url, model: None  # a stream found a model version missing on url
        self._refused: dict[str, str] = {}  # url -> why it was last refused admission
        self._ids = itertools.count(secrets.randbits(62))
        self._background: set[asyncio.Task] = set()
        self._clients: dict[str, aioclient.InferenceServerClient] = {}
        self._clients_loop = None  # the event loop the clients' channels belong to

    def client(self, url: str) -> aioclient.InferenceServerClient:
        """The shared client (one gRPC channel) to ``url``, for the running event loop."""
        loop = asyncio.get_running_loop()
        if loop is not self._clients_loop:  # a channel is bound to the loop it was made in
            self._clients, self._clients_loop = {}, loop
        c = self._clients.get(url)
        if c is None:
            c = self._clients[url] = aioclient.InferenceServerClient(url, channel_args=CHANNEL_ARGS)
        return c

    async def close(self) -> None:
        """Close the channels (streams still on them fail)."""
        clients, self._clients = self._clients, {}
        for c in clients.values():
            await c.close()

    def ready_urls(self) -> list[str]:
        return [u for u in self.urls if self.ready[u]]

    def _set_ready(self, url: str, ready: bool, why: str = "") -> None:
        if self.ready[url] == ready:
            return
        self.ready[url] = ready
        if ready:
            log.info("Triton at %s is ready", url)
        else:
            log.warning("Triton at %s is not ready%s", url, f": {why}" if why else "")
        self.on_change(self.ready_urls())

    def _detach(self, coro) -> None:
        """Run ``coro`` in the background, holding a reference until it is done."""
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def mark_down(self, url: str) -> None:
        self._set_ready(url, False, "a stream lost it")

    def _release(self, url: str) -> None:
        self.live[url] = max(0, self.live[url] - 1)

    def open(self, *, adapter: str = "", latency: str = "", boost: str = "", model: str | None = None,
             fingerprint: str | None = None, urls=None) -> Sequence:
        """A sequence on the least loaded ready instance (of ``urls``, where given: those that have
        ``model`` loaded). ``model``: the Triton model of a model version (default the pool's), whose
        replies must carry ``fingerprint``."""
        up = [u for u in self.ready_urls() if urls is None or u in urls]
        if not up:
            raise TritonUnavailable(f"no Triton instance is ready ({', '.join(self.urls)}); try again later")
        url = min(up, key=lambda u: self.live[u])
        self.live[url] += 1
        return Sequence(self, url, next(self._ids), adapter, latency, self.timeout, boost, model, fingerprint)

    async def live_sequences(self, url: str, model: str) -> int:
        """How many sequences ``model`` on ``url`` holds state for (all gateways' streams)."""
        return (await self._ask_model(url, model=model)).live_sequences

    async def _ask_model(self, url: str, adapter: str = "", model: str | None = None) -> ChunkReply:
        """An empty sequence (START and END, no audio) on ``url``, with ``adapter`` loaded for it."""
        result = await self.client(url).infer(model or self.model, request_inputs(np.zeros(0, np.float32), start=True,
                                                                         adapter=adapter),
                                               sequence_id=next(self._ids), sequence_start=True, sequence_end=True,
                                               client_timeout=self.timeout)
        return parse_reply(result)

    async def check_models(self, model_dir: str = "") -> list[str]:
        """Ask each instance which model it serves and raise :class:`ModelMismatch` for one that serves
        another model than :attr:`fingerprint`. Returns the URLs that could not be asked (down or not
        ready yet): they are not ready until :meth:`watch` admits them."""
        unreachable = []
        for url in self.urls:
            try:
                reply = await self._ask_model(url)
            except (InferenceServerException, grpc.RpcError, OSError) as e:
                log.warning("cannot ask Triton at %s which model it serves yet: %s", url, e)
                unreachable.append(url)
                self._set_ready(url, False, "not answering")
                continue
            check_fingerprint(url, reply.model_fingerprint, self.fingerprint, model_dir)
        return unreachable

    async def _admit(self, url: str) -> None:
        """Check a (re)joining instance's model and warm its bank, then mark it ready."""
        self.on_admit(url)
        try:
            check_fingerprint(url, (await self._ask_model(url)).model_fingerprint, self.fingerprint)
        except ModelMismatch as e:
            if self._refused.get(url) != str(e):  # once per change, not twice a second
                log.error("%s", e)
            self._refused[url] = str(e)
            return
        except (InferenceServerException, grpc.RpcError, OSError):
            return
        for ref in self.warm():
            try:
                await self._ask_model(url, ref)
            except (InferenceServerException, grpc.RpcError, OSError) as e:
                log.warning("warming adapter %s on Triton at %s failed: %s", ref, url, e)
        self._refused.pop(url, None)
        self._set_ready(url, True)

    async def watch(self, interval: float = 0.5) -> None:
        """Probe every instance every ``interval`` seconds until cancelled (see the class docstring)."""
        while True:
            for url in self.urls:
                try:
                    ok = bool(await self.client(url).is_model_ready(self.model, client_timeout=max(interval, 1.0)))
                except Exception:  # noqa: BLE001 - any failure means not ready
                    ok = False
                if not ok:
                    self._set_ready(url, False, "its health API says the model is not ready")
                elif not self.ready[url]:
                    await self._admit(url)
            await asyncio.sleep(interval)
