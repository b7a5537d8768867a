"""One stream through the gateway, whatever the protocol: tenant lease, session, Triton sequence.

:meth:`Gateway.run_stream` is the loop both front ends share. It takes the client's inputs (audio
bytes, :data:`FLUSH`) as an async iterator and yields :class:`~brogue.server.session.Result`
events. It enforces the tenant's limits, sends each full chunk to Triton and awaits its reply
(which also paces a client that sends faster than the model runs), and always releases the lease
and the Triton sequence, whether the stream ends, fails, or the client vanishes.

Errors are :class:`StreamError` with a ``code`` the front ends map to their protocol (and count in
the ``brogue_errors_total`` metric).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from brogue.audio.codecs import AudioFormatError
from brogue.boosting import merge, to_wire
from brogue.errors import ErrorCode
from brogue.engine.metadata import ModelMeta
from brogue.models import MemoryBudget, ModelError, ModelStore, NoRoom

from .metrics import Metrics
from .model_fleet import ModelFleet, ModelLoadError, ServedModel
from .session import ModelInfo, Result, SessionConfig, StreamSession
from .tenants import AuthError, Lease, LimitError, Tenant, TenantRegistry
from .triton_client import ModelMismatch, SequenceError, TritonPool, TritonUnavailable
from .triton_models import VersionModels

log = logging.getLogger(__name__)

STOPPED = object()  # what Gateway.next_input gives once the gateway is shutting down

FLUSH = "flush"


class StreamError(Exception):
    """A stream failure for the client: ``code`` (an :class:`~brogue.errors.ErrorCode`) says why, and
    maps once to each protocol (:data:`brogue.errors.WIRE`)."""

    def __init__(self, code: ErrorCode | str, message: str):
        super().__init__(message)
        self.code = ErrorCode(code)  # a ValueError for a code that does not exist


@dataclass(frozen=True)
class GatewayConfig:
    model_dir: Path
    tenants_file: Path
    triton_urls: tuple[str, ...]
    model: str = "asr_streaming"
    store_dir: Path | None = None  # the adapter store Triton reads; default MODEL_REPOSITORY/adapters
    latencies: tuple[str, ...] = ()  # the latencies Triton serves (its LATENCIES); () = all of the model's
    model_repository: Path | None = None  # default: model_dir's MODEL_REPOSITORY (model_dir is .../exported/NAME)
    triton_repository: Path | None = None  # the repository as the Triton instances see it; default the same
    model_config_name: str = ""  # Triton's --model-config-name (e.g. "gpu"): the config versions are served with
    memory_budget: int | None = None  # bytes per Triton instance for model versions; None: no limit
    drain_interval: float = 2.0  # seconds between checks for drained model versions to unload

    def __post_init__(self):
        if self.model_repository is None:
            object.__setattr__(self, "model_repository", Path(self.model_dir).parent.parent)
        if self.store_dir is None:
            object.__setattr__(self, "store_dir", Path(self.model_repository) / "adapters")


class Gateway:
    def __init__(self, config: GatewayConfig, metrics: Metrics | None = None):
        self.config = config
        self.meta = ModelMeta.load(config.model_dir)
        self.latencies = self.meta.served_latencies(list(config.latencies))  # ValueError for unknown ones
        self.tenants = TenantRegistry(config.tenants_file)
        self.pool = TritonPool(list(config.triton_urls), model=config.model, fingerprint=self.meta.fingerprint)
        self.metrics = metrics or Metrics()
        params = {"LATENCIES": ",".join(config.latencies)} if config.latencies else {}
        self.models = ModelFleet(
            config.model_dir, ModelStore(Path(config.model_repository) / "models"),
            VersionModels(config.model_repository, triton_repository=config.triton_repository, parameters=params,
                          config_name=config.model_config_name),
            self.pool, budget=MemoryBudget(config.memory_budget) if config.memory_budget else None,
            referenced=self.tenants.models_in_use, pinned=self.tenants.pinned_models, latencies=config.latencies,
            drain_interval=config.drain_interval)
        self.pool.warm = self.tenant_adapters
        self.pool.on_change = self._ready_changed
        self.metrics.triton_ready.set(len(self.pool.ready_urls()))
        self.on_ready_change = []  # callbacks(ready: bool), e.g. the gRPC health service
        self._stopping: asyncio.Future | None = None

    @property
    def stopping(self) -> asyncio.Future:
        """Done once :meth:`shutdown` is called: the front ends then end each live stream as if its
        client had ended the audio (finals for everything received), and take no new ones."""
        loop = asyncio.get_running_loop()
        if self._stopping is None or self._stopping.get_loop() is not loop:
            self._stopping = loop.create_future()
        return self._stopping

    def shutdown(self) -> None:
        if not self.stopping.done():
            self.stopping.set_result(None)

    async def next_input(self, start: Callable[[], Awaitable], timeout: float):
        """What ``start()`` (a client read: the next message or request) gives within ``timeout``
        seconds, or :data:`STOPPED` once :meth:`shutdown` is called. Raises ``asyncio.TimeoutError``
        when nothing came in time, and whatever the read raises. The read is cancelled if it loses."""
        stopping = self.stopping
        if stopping.done():
            return STOPPED
        read = asyncio.ensure_future(start())
        try:
            done, _ = await asyncio.wait((read, stopping), timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            read.cancel()
            raise
        if read in done:
            return read.result()
        read.cancel()
        if stopping.done():
            return STOPPED
        raise asyncio.TimeoutError

    def authenticate(self, api_key: str | None) -> Tenant:
        try:
            return self.tenants.authenticate(api_key)
        except AuthError as e:
            raise StreamError(ErrorCode.UNAUTHENTICATED, str(e)) from None

    def tenant_adapters(self) -> list[str]:
        """The adapters tenants of the base model use now: what a (re)joining Triton instance loads first."""
        return sorted({t.adapter for t in self.tenants.tenants().values() if t.adapter and not t.model})

    def _ready_changed(self, ready_urls: list[str]) -> None:
        self.metrics.triton_ready.set(len(ready_urls))
        for callback in self.on_ready_change:
            callback(bool(ready_urls))

    @property
    def ready(self) -> bool:
        """At least one Triton instance is ready with this gateway's model."""
        return bool(self.pool.ready_urls())

    def require_ready(self) -> None:
        """Refuse a new stream (``unavailable``) while no Triton instance can take it."""
        if not self.ready:
            raise StreamError(ErrorCode.UNAVAILABLE, f"no Triton instance is ready ({', '.join(self.pool.urls)}); "
                                             "try again later")

    async def check_triton(self) -> None:
        """Refuse to serve (:class:`ModelMismatch`) when a Triton instance serves another model than
        ``config.model_dir``: its tokens would be decoded with the wrong vocabulary."""
        await self.pool.check_models(str(self.config.model_dir))

    def check_phrases(self, phrases, model: ServedModel | None = None) -> None:
        """A :class:`~brogue.engine.phrases.PhraseError` for a boost phrase ``model`` (default: the
        base) cannot write, before any stream asks Triton for it (Triton's model checks again)."""
        if phrases:
            tokenizer = (model or self.models.base).phrases()
            for p in phrases:
                tokenizer.encode(p.text)

    def tenant_model(self, tenant: Tenant) -> ServedModel:
        """The model version ``tenant`` streams on (not loaded yet): ``model`` error if it is not
        in the store or damaged."""
        try:
            return self.models.describe(tenant.model)
        except (ModelError, ValueError) as e:
            raise StreamError(ErrorCode.MODEL, f"tenant {tenant.name}'s model: {e}") from None

    def model_info(self, latency: str | None, model: ServedModel | None = None) -> ModelInfo:
        m = model or self.models.base
        try:
            return ModelInfo.from_meta(m.meta, m.meta.served_latency(latency, m.latencies).name)
        except ValueError as e:
            raise StreamError(ErrorCode.BAD_REQUEST, str(e)) from None

    async def acquire_model(self, tenant: Tenant) -> ServedModel:
        """The tenant's model version, loaded, with one more live stream (give it back with
        ``self.models.release``)."""
        model = self.tenant_model(tenant)
        try:
            return await self.models.acquire(model.key)
        except (ModelError, ValueError) as e:
            raise StreamError(ErrorCode.MODEL, f"tenant {tenant.name}'s model: {e}") from None
        except NoRoom as e:
            raise StreamError(ErrorCode.CAPACITY, str(e)) from None
        except ModelLoadError as e:
            raise StreamError(ErrorCode.MODEL, str(e)) from None
        except TritonUnavailable as e:
            raise StreamError(ErrorCode.UNAVAILABLE, str(e)) from None

    def open_lease(self, tenant: Tenant) -> Lease:
        """Count a new stream of ``tenant`` against its limit (before telling the client it's ready)."""
        try:
            return self.tenants.open_stream(tenant)
        except LimitError as e:
            raise StreamError(ErrorCode.LIMIT, str(e)) from None

    async def run_stream(self, tenant: Tenant, config: SessionConfig, inputs: AsyncIterator,
                         api: str = "ws", lease: Lease | None = None,
                         adapter: str | None = None, model: ServedModel | None = None) -> AsyncIterator[Result]:
        """Run one stream; yields results; raises :class:`StreamError`. The stream's ``lease`` (from
        :meth:`open_lease`) and ``model`` (from :meth:`acquire_model`: the tenant's model version,
        loaded) are released at the end; without them, they are taken here. ``adapter``
        overrides the tenant's (``""``: the base model): the front end has checked that the tenant may
        use it; None (every front end but the OpenAI API) decodes with the tenant's adapter."""
        lease = lease or self.open_lease(tenant)
        tenant = lease.tenant  # the tenant as it is now (its adapter may have been re-pointed)
        m = self.metrics
        m.streams_total.labels(tenant.name, api).inc()
        m.active_streams.labels(tenant.name, api).inc()
        seq = None
        t_first_audio, busy, first_partial_seen = None, 0.0, False
        try:
            version = model or self.tenant_model(tenant)  # acquired (loaded) below when not given
            try:
                session = StreamSession(config, self.model_info(config.latency, version))
            except AudioFormatError as e:
                raise StreamError(ErrorCode.BAD_REQUEST, str(e)) from None
            try:
                boost = merge(tenant.boost, config.boost)
                self.check_phrases(boost, version)
            except ValueError as e:  # BoostError, PhraseError
                raise StreamError(ErrorCode.BAD_REQUEST, str(e)) from None
            if model is None:
                model = await self.acquire_model(tenant)  # loads the version if no instance has it
            try:
                seq = self.pool.open(adapter=tenant.adapter if adapter is None else adapter,
                                     latency=config.latency or "", boost=to_wire(boost) if boost else "",
                                     model=model.triton_name if model.key else None, fingerprint=model.fingerprint,
                                     urls=self.models.ready_urls(model) if model.key else None)
            except TritonUnavailable as e:
                raise StreamError(ErrorCode.UNAVAILABLE, str(e)) from None

            async def send(chunk, end=False):
                nonlocal busy, first_partial_seen
                t = time.perf_counter()
                try:
                    reply = await seq.send(chunk, end=end)
                except TritonUnavailable as e:
                    raise StreamError(ErrorCode.UNAVAILABLE, str(e)) from None
                except ModelMismatch as e:
                    log.error("%s", e)
                    raise StreamError(ErrorCode.INTERNAL, str(e)) from None
                except SequenceError as e:
                    raise StreamError(e.code, str(e)) from None
                dt = time.perf_counter() - t
                busy += dt
                m.chunk_latency.observe(dt)
                events = session.on_reply(reply.tokens, reply.times, reply.confidences, reply.blank_probs)
                for ev in events:
                    if ev.kind == "partial" and not first_partial_seen:
                        first_partial_seen = True
                        m.first_partial.observe(time.monotonic() - t_first_audio)
                    if ev.kind == "final":
                        m.final_latency.observe(dt)
                return events

            async for item in inputs:
                if item == FLUSH:
                    for ev in session.force_endpoint():
                        m.final_latency.observe(0.0)  # the final is due at once: nothing is pending
                        yield ev
                    continue
                if t_first_audio is None:
                    t_first_audio = time.monotonic()
                try:
                    chunks = session.feed_audio(item)
                except AudioFormatError as e:
                    raise StreamError(ErrorCode.BAD_AUDIO, str(e)) from None
                if session.audio_seconds > tenant.max_stream_seconds:
                    raise StreamError(ErrorCode.LIMIT, f"stream longer than tenant {tenant.name}'s limit of "
                                               f"{tenant.max_stream_seconds:g} s")
                for chunk in chunks:
                    for ev in await send(chunk):
                        yield ev
            if t_first_audio is None:
                t_first_audio = time.monotonic()
            t_end = time.monotonic()  # the client's end of audio: its last words end here
            try:
                last = session.end_audio()
            except AudioFormatError as e:
                raise StreamError(ErrorCode.BAD_AUDIO, str(e)) from None
            for ev in await send(last, end=True):
                yield ev
            for ev in session.on_end():
                m.final_latency.observe(time.monotonic() - t_end)
                yield ev
            m.audio_seconds.labels(tenant.name).inc(session.audio_seconds)
            if session.audio_seconds > 0:
                m.rtf.observe(busy / session.audio_seconds)
        finally:
            m.active_streams.labels(tenant.name, api).dec()
            lease.release()
            if model is not None:
                self.models.release(model)
            if seq is not None and seq.started and not seq.closed:
                # The stream stopped early (client gone, error): end the sequence so Triton frees
                # its state now rather than at the idle sweep.
                try:
                    await seq.send(np.zeros(0, np.float32), end=True)
                except Exception:  # noqa: BLE001 - best effort; the sweep is the fallback
                    pass
            if seq is not None:
                await seq.close()
