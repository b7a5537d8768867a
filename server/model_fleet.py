"""The model versions a gateway serves: the deployment's base and the model store's versions.

Each tenant names a model version (``name@version`` in the model store, or "" for the deployment's
base model, ``asr_streaming``). :class:`ModelFleet` keeps, per version, what the gateway needs to
stream on it (:class:`ServedModel`: its ``model.json``, the Triton model that serves it, the
instances that have it loaded, its live streams), and loads and unloads versions in the Triton
instances (:class:`~brogue.server.triton_models.VersionModels`):

- **On demand.** :meth:`ModelFleet.acquire` loads a version that no ready instance has, before the
  stream's first chunk. Loads are serialised, and one load serves every stream waiting for it.
- **Memory budget.** Each instance has ``budget`` bytes for model versions. A version that does not
  fit makes room by unloading idle (no live stream, on any gateway), unpinned versions, least
  recently used first; when even that is not enough the stream is refused (``capacity``) with the
  numbers. The base model and pinned versions are never unloaded.
- **Drain.** A version no tenant points at and nobody pins is unloaded once its last stream ends:
  after a rollout moves the tenants of ``NAME@v1`` to ``NAME@v2``, v1's open streams finish on v1,
  then v1 goes. Before any unload the fleet asks the Triton model how many sequences it still holds
  (other gateways' streams count), and waits while that is not 0. A stream's version is never
  unloaded under it.

A Triton instance that restarts comes back with the base model only: the fleet forgets what it had
loaded there, and the next stream on a version loads it again. Several gateways may share the
instances: what is loaded is asked of Triton before each decision (a version another gateway loaded
counts against the budget, and one it unloaded is loaded again), and loading a version that is
already loaded with the same config is a no-op that keeps its sequences (measured).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from tritonclient.utils import InferenceServerException

from brogue.engine.metadata import Latency, ModelMeta
from brogue.engine.phrases import PhraseTokenizer
from brogue.models import Footprint, LoadedModel, MemoryBudget, ModelError, ModelRef, ModelStore, NoRoom, \
    estimate_footprint

from .triton_client import TritonPool, TritonUnavailable
from .triton_models import BASE_MODEL, VersionModels, triton_name

log = logging.getLogger(__name__)


class ModelLoadError(RuntimeError):
    """Triton could not load a model version (the message is Triton's)."""


@dataclass(eq=False)
class ServedModel:
    """One model version as the gateway streams on it."""

    key: str  # "name@version", or "" for the deployment's base
    triton_name: str
    meta: ModelMeta
    footprint: Footprint
    latencies: dict[str, Latency]
    live: int = 0  # this gateway's streams on it
    last_used: float = 0.0  # monotonic time of its last stream start
    loaded_on: set[str] = field(default_factory=set)  # Triton URLs (the base: all of them)
    unloading: bool = False  # an unload is under way: a stream that wants it waits, then loads it again
    _phrases: PhraseTokenizer | None = None

    @property
    def ref(self) -> ModelRef | None:
        return ModelRef.parse(self.key) if self.key else None

    @property
    def fingerprint(self) -> str:
        return self.meta.fingerprint

    @property
    def label(self) -> str:
        return self.key or f"base ({self.meta.raw.get('name') or BASE_MODEL})"

    def phrases(self) -> PhraseTokenizer:
        """Its vocabulary's phrase tokenizer (made on first use)."""
        if self._phrases is None:
            self._phrases = PhraseTokenizer.for_model(self.meta, self.meta.root)
        return self._phrases


def served_settings(settings: dict[str, str]) -> dict:
    """The keyword arguments of :func:`estimate_footprint` from ``asr_streaming`` parameters."""
    lats = [n.strip() for n in settings.get("LATENCIES", "").split(",") if n.strip()]
    return {"max_streams": int(settings.get("MAX_STREAMS", "256")), "max_batch": int(settings.get("MAX_BATCH", "64")),
            "slots": int(settings.get("BANK_SLOTS", "8")), "latencies": lats or None,
            "weights": settings.get("WEIGHTS", "auto"), "decoder": settings.get("DECODER", "auto")}


class ModelFleet:
    """The base model and the store's versions over ``pool``'s Triton instances (module docstring).

    ``referenced()``: the model keys tenants point at now; ``pinned()``: the pinned keys. ``budget``:
    per instance, None for no limit.
    """

    def __init__(self, base_dir: str | Path, store: ModelStore, versions: VersionModels, pool: TritonPool, *,
                 budget: MemoryBudget | None, referenced: Callable[[], set[str]],
                 pinned: Callable[[], tuple[str, ...]], latencies: tuple[str, ...] = (),
                 drain_interval: float = 2.0, drain_grace: float = 10.0, load_timeout: float = 300.0):
        self.store, self.versions, self.pool, self.budget = store, versions, pool, budget
        self.referenced, self.pinned = referenced, pinned
        self.latency_names = tuple(latencies)
        # drain_grace: a version used (or loaded for a rollout) this recently is not drained yet
        self.drain_interval, self.drain_grace, self.load_timeout = drain_interval, drain_grace, load_timeout
        self.settings = served_settings(versions.settings())
        meta = ModelMeta.load(base_dir)
        self.base = ServedModel("", BASE_MODEL, meta, estimate_footprint(base_dir, **self.settings),
                                meta.served_latencies(list(latencies)), loaded_on=set(pool.urls))
        self.models: dict[str, ServedModel] = {"": self.base}
        self._describing = threading.Lock()  # describe() also runs in admin worker threads
        self._lock = asyncio.Lock()  # loads, unloads and budget decisions, one at a time
        pool.on_admit = self.forget
        pool.model_gone = self._model_gone

    # -- lookup ----------------------------------------------------------------------------------

    def describe(self, key: str) -> ServedModel:
        """The :class:`ServedModel` of ``key`` (read from the store the first time; nothing loads).
        ``ModelError`` for a reference that is malformed, not in the store, or damaged."""
        m = self.models.get(key)
        if m is not None:
            return m
        with self._describing:  # one ServedModel per key: its live count must be the only one
            m = self.models.get(key)
            return m if m is not None else self._describe(key)

    def _describe(self, key: str) -> ServedModel:
        ref = ModelRef.parse(key)  # ValueError for a malformed one
        self.store.read(ref)  # ModelError: missing, incomplete
        folder = self.store.path(ref)
        try:
            meta = ModelMeta.load(folder)
            lats = meta.served_latencies(list(self.latency_names)) if self.latency_names else meta.latencies
        except (ValueError, KeyError, FileNotFoundError) as e:
            raise ModelError("not_a_model", f"model {ref}: {e}") from None
        m = ServedModel(key, triton_name(ref), meta, estimate_footprint(folder, **self.settings), lats)
        self.models[key] = m
        return m

    def footprint_of(self, folder: Path) -> Footprint:
        """What an export would cost to serve here (a publish checks it before it is stored)."""
        return estimate_footprint(folder, **self.settings)

    def loaded_view(self) -> list[LoadedModel]:
        pinned = set(self.pinned())
        return [LoadedModel(m.key, m.footprint.total, pinned=not m.key or m.key in pinned, live=m.live,
                            last_used=m.last_used) for m in self.models.values() if m.loaded_on]

    def check_fits(self, label: str, footprint: Footprint) -> None:
        """``NoRoom`` unless a version of ``footprint`` could ever be loaded beside the pinned ones."""
        if self.budget is not None:
            self.budget.check_alone(label, footprint.total, self.loaded_view() + self._pinned_unloaded())

    def _pinned_unloaded(self) -> list[LoadedModel]:
        out = []
        for key in self.pinned():
            m = self.models.get(key)
            if m is None or not m.loaded_on:
                try:
                    out.append(LoadedModel(key, self.describe(key).footprint.total, pinned=True))
                except (ModelError, ValueError):
                    continue
        return out

    # -- streams ---------------------------------------------------------------------------------

    def ready_urls(self, m: ServedModel) -> list[str]:
        return [u for u in self.pool.ready_urls() if u in m.loaded_on]

    async def acquire(self, key: str) -> ServedModel:
        """The version of ``key``, loaded on at least one ready instance, with one more live stream.
        Raises ``ModelError``/``ValueError`` (no such version), :class:`~brogue.models.NoRoom`,
        :class:`ModelLoadError` or :class:`TritonUnavailable`."""
        m = self.describe(key)
        m.live += 1  # counted before the load: neither the budget nor a drain may pick it now
        try:
            if key:
                if m.unloading:  # a drain or eviction got there first: let it finish, then load again
                    async with self._lock:
                        pass
                await self._refresh(m)  # another gateway may have unloaded it
                if not self.ready_urls(m):
                    await self._ensure_loaded(m)
        except BaseException:
            m.live -= 1
            raise
        m.last_used = time.monotonic()
        return m

    def release(self, m: ServedModel) -> None:
        m.live = max(0, m.live - 1)

    async def prepare(self, key: str) -> ServedModel:
        """Load ``key`` now (a publish or assignment proves the version loads before tenants use it;
        it is not drained for ``drain_grace`` seconds, while they move to it)."""
        m = await self.acquire(key)
        self.release(m)
        return m

    # -- loading and unloading -------------------------------------------------------------------

    async def _refresh(self, m: ServedModel) -> None:
        """Ask the ready instances whether they have ``m`` loaded (Triton's health API)."""
        for url in self.pool.ready_urls():
            try:
                ready = bool(await self.pool.client(url).is_model_ready(m.triton_name, client_timeout=5.0))
            except Exception:  # noqa: BLE001 - an instance that does not answer has nothing loaded for us
                ready = False
            (m.loaded_on.add if ready else m.loaded_on.discard)(url)

    async def _refresh_all(self) -> None:
        """Refresh every store version (what other gateways loaded counts against the budget)."""
        for entry in self.store.list():
            if entry.manifest is not None:
                try:
                    await self._refresh(self.describe(str(entry.ref)))
                except (ModelError, ValueError):
                    continue

    async def _ensure_loaded(self, m: ServedModel) -> None:
        async with self._lock:
            if self.ready_urls(m):
                return  # another stream's load got there first
            urls = self.pool.ready_urls()
            if not urls:
                raise TritonUnavailable(f"no Triton instance is ready to load model {m.key}; try again later")
            if self.budget is not None:
                await self._refresh_all()
                for key in self.budget.plan(m.key, m.footprint.total, self.loaded_view()):
                    if not await self._unload(self.models[key], reason=f"to make room for {m.key}"):
                        raise NoRoom(f"model {m.key} needs {m.footprint.total >> 20} MiB; model {key} would make room "
                                     "but still has live streams (of another gateway)")
            t0 = time.monotonic()
            results = await asyncio.gather(*(self._load_on(url, m) for url in urls), return_exceptions=True)
            errors = [r for r in results if isinstance(r, BaseException)]
            if not m.loaded_on:
                raise ModelLoadError(f"Triton could not load model {m.key}: {errors[0]}")
            log.info("model %s loaded on %d instance(s) in %.1f s (%s)", m.key, len(m.loaded_on),
                     time.monotonic() - t0, m.footprint.describe())

    async def _load_on(self, url: str, m: ServedModel) -> None:
        try:
            await self.versions.load(self.pool.client(url), m.ref, timeout=self.load_timeout)
        except (InferenceServerException, grpc.RpcError, OSError) as e:
            log.error("loading model %s on Triton at %s failed: %s", m.key, url, e)
            raise ModelLoadError(str(e)) from None
        m.loaded_on.add(url)

    async def _unload(self, m: ServedModel, reason: str) -> bool:
        """Unload ``m`` from every instance where no sequence is live on it; whether it is gone."""
        if not m.key or m.live:
            return False
        m.unloading = True  # from here a stream that wants m waits for the lock, then loads it again
        try:
            return await self._unload_idle(m, reason)
        finally:
            m.unloading = False

    async def _unload_idle(self, m: ServedModel, reason: str) -> bool:
        for url in sorted(m.loaded_on):
            try:
                live = await self.pool.live_sequences(url, m.triton_name)
            except (InferenceServerException, grpc.RpcError, OSError) as e:
                log.warning("model %s on %s: cannot ask for its live sequences (%s); not unloaded", m.key, url, e)
                continue
            if live > 0:
                log.info("model %s on %s still holds %d sequence(s); unloaded once they end", m.key, url, live)
                continue
            try:
                await self.versions.unload(self.pool.client(url), m.ref, timeout=self.load_timeout)
            except (InferenceServerException, grpc.RpcError, OSError) as e:
                log.warning("unloading model %s on %s failed: %s", m.key, url, e)
                continue
            m.loaded_on.discard(url)
            log.info("model %s unloaded from %s (%s)", m.key, url, reason)
        return not m.loaded_on

    async def drain_once(self) -> list[str]:
        """Unload every loaded version that no tenant points at, nobody pins, and no stream uses;
        returns the keys unloaded."""
        keep = self.referenced() | set(self.pinned()) | {""}
        gone, recent = [], time.monotonic() - self.drain_grace
        async with self._lock:
            for m in list(self.models.values()):
                if m.loaded_on and m.key not in keep and m.live == 0 and m.last_used < recent:
                    if await self._unload(m, reason="drained: no tenant uses it"):
                        gone.append(m.key)
        return gone

    async def watch(self) -> None:
        """Drain every ``drain_interval`` seconds until cancelled."""
        while True:
            await asyncio.sleep(self.drain_interval)
            try:
                await self.drain_once()
            except Exception:  # noqa: BLE001 - the next round tries again
                log.exception("model drain failed")

    def forget(self, url: str) -> None:
        """A Triton instance (re)joined: it holds the base model only."""
        for m in self.models.values():
            if m.key:
                m.loaded_on.discard(url)

    def _model_gone(self, url: str, triton_model: str) -> None:
        for m in self.models.values():
            if m.triton_name == triton_model:
                m.loaded_on.discard(url)
