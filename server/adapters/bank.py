"""The adapter bank: which adapter sits in which slot of the encoder's bank tensors.

Like vLLM's ``lora/``, Brogue keeps three things apart: a request's reference to an adapter
(:class:`~brogue.adapters.AdapterRef`), the weights of one adapter (read and validated by
:class:`~brogue.adapters.store.AdapterStore`), and the manager of slots, :class:`AdapterBank`.
The encoder only sees one slot id per batch row (``adapter_ids``).

**Slots.** The bank manages slots ``1 .. S-1`` of a :class:`~brogue.engine.adapter_bank.BankTensors`;
slot 0 is the base model and is never written. A slot is *held* while live streams use it (its
refcount is their number) or while its adapter is pinned. A held slot is never evicted. An
adapter that nothing holds stays resident, as a cache, until a load finds no free slot and evicts
the least recently used one that is not held. A load that finds every slot held fails with
:class:`BankFullError`. "Used" means loaded, or acquired or released by a stream. References are
immutable, so ``acme@v1`` and ``acme@v2`` are two adapters that may sit in two slots at once: on a
hot swap, open streams keep v1 and new streams get v2.

**Loading.** Loads run on the bank's loader thread. The file is read and validated
(:meth:`AdapterStore.load`) with no lock held. Then, under the bank's lock, the load picks a
slot, copies the adapter into it (:meth:`BankTensors.write`), and gives the slot to every stream
that waits for it and to a pending :meth:`~AdapterBank.pin`, all in one step, so a freshly loaded
adapter cannot be evicted before the streams that asked for it hold it. At most one load of a
reference is in flight; later requests for it join that load. A load that fails
(:class:`~brogue.adapters.AdapterError`, :class:`BankFullError`, ``OSError``) changes nothing in
the bank, and every request waiting for it gets its error.

The copy writes only a free slot or an evicted one, which no live stream reads, so the encoder can
keep running on the other slots meanwhile. Hence: release a stream only after its last encoder
run has returned.

**Blocking or not.** Measured on this project's CPU host (2 shared cores, files in the page
cache), a miss costs about 2.5 ms for an adapter of 17 layers, d_model 512 and dim 8 (0.6 MB),
3.5-4 ms at dim 32 (2.3 MB) and 35 ms for 24 layers, d_model 1024, dim 64 (12.8 MB): mostly the
SHA-256 of the file, the finite-value check and the copy; a hit costs about 10 µs. A store on
network storage or an fsspec URL would take far longer. That is too long to block a Triton
``execute()``, in which every other stream of the batch waits, so the bank offers:

- :meth:`~AdapterBank.try_acquire`: never blocks. A hit returns the slot; a miss starts (or
  joins) the load and returns ``None``; execute() answers "adapter loading, retry", and the
  stream's retry gets the slot, or the load's error. This is what the Triton model uses.
- :meth:`~AdapterBank.acquire`: blocks until the adapter is loaded, for scripts and tests.
- :meth:`~AdapterBank.acquire_async`: awaits the load, for asyncio callers.
- :meth:`~AdapterBank.prefetch`: loads without a stream, in the background.

At about 400 lines it is one job: the slot table, its claims and its background loads change
together under one lock, so they stay in one file.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Hashable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from typing import NamedTuple

from brogue.adapters import AdapterRef, AdapterWeights, BaseSpec
from brogue.engine.adapter_bank import BankTensors

from brogue.adapters.store import AdapterStore, as_ref

__all__ = ["AdapterBank", "AdapterBankError", "BankFullError", "BankStats", "SlotInfo"]

log = logging.getLogger(__name__)


class AdapterBankError(RuntimeError):
    """The bank cannot serve a request; ``code`` names why, for programs.

    Codes: ``bank_full`` (:class:`BankFullError`); ``released``: the stream was released by
    another caller while it waited for its adapter.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class BankFullError(AdapterBankError):
    """Every slot is held by live streams or pinned, so no adapter can be loaded now."""

    def __init__(self, message: str) -> None:
        super().__init__("bank_full", message)


class SlotInfo(NamedTuple):
    """One resident slot, as :meth:`AdapterBank.snapshot` reports it."""

    ref: AdapterRef
    refcount: int  # live streams using the slot
    pinned: bool
    last_used: float  # time.monotonic() of the last use


@dataclass(frozen=True)
class BankStats:
    """Counters since the bank was made, for metrics.

    ``hits``/``misses``: stream requests that found their adapter resident / not resident (a
    stream that retries :meth:`~AdapterBank.try_acquire` counts once). ``loads``: adapters read
    from the store and written into a slot; ``load_errors``: loads that failed; ``evictions``:
    adapters evicted to make room; ``load_seconds``: total time of the loads, reading,
    validation and copy (not the wait for the loader thread).
    """

    hits: int = 0
    misses: int = 0
    loads: int = 0
    load_errors: int = 0
    evictions: int = 0
    load_seconds: float = 0.0


@dataclass(eq=False)
class _Slot:
    ref: AdapterRef
    streams: set = field(default_factory=set)
    pinned: bool = False
    tick: int = 0  # the bank's use counter at the last use: orders eviction
    last_used: float = 0.0  # time.monotonic() at the last use, for snapshot()


@dataclass(eq=False)
class _Load:
    """A load in flight: its future (the slot) and what is to hold the slot once it is written."""

    future: Future
    streams: set = field(default_factory=set)
    pin: bool = False


@dataclass(eq=False)
class _Stream:
    """A stream's claim: waiting (``slot`` and ``error`` None), holding ``slot``, or failed."""

    ref: AdapterRef
    slot: int | None = None
    error: BaseException | None = None


class AdapterBank:
    """Assigns adapters from ``store`` to the slots of ``tensors``, for the base model ``fingerprint``.

    Adapters must fit ``BaseSpec(fingerprint, tensors.n_layers, tensors.d_model, tensors.max_dim)``.
    ``loader_threads`` loads may run at once (of different adapters). All methods are thread-safe.
    Call :meth:`close` when done. Reference arguments are ``AdapterRef``\\ s or ``"name@version"``.

    ``on_load(weights)``, when given, runs on the loader thread after an adapter is read and
    before it is placed (slow work, e.g. building its domain LM, goes there); it returns a function
    that is called with the slot, under the bank's lock, when the adapter is written into it.
    """

    def __init__(self, store: AdapterStore, tensors: BankTensors, fingerprint: str, *, loader_threads: int = 1,
                 on_load=None):
        self.store = store
        self.on_load = on_load
        self.tensors = tensors
        self.base = BaseSpec(fingerprint, tensors.n_layers, tensors.d_model, tensors.max_dim)
        self._lock = threading.Lock()
        self._free = set(range(1, tensors.slots))
        self._slots: dict[int, _Slot] = {}
        self._by_ref: dict[AdapterRef, int] = {}
        self._loads: dict[AdapterRef, _Load] = {}
        self._streams: dict[Hashable, _Stream] = {}
        self._stats = BankStats()
        self._ticks = 0
        self._loader = ThreadPoolExecutor(loader_threads, thread_name_prefix="adapter-loader")

    def close(self) -> None:
        """Wait for the loads in flight, then stop the loader threads."""
        self._loader.shutdown(wait=True)

    # -- streams ---------------------------------------------------------------------------------

    def try_acquire(self, ref: AdapterRef | str, *, stream_id: Hashable) -> int | None:
        """Give ``stream_id`` the slot of ``ref`` without blocking, or start loading it.

        Returns the slot if ``ref`` is resident; the stream now holds it until :meth:`release`.
        Otherwise starts or joins the load of ``ref`` and returns ``None``: call again with the
        same ``stream_id`` to get the slot once it is loaded. The stream holds the slot from the
        moment the load writes it. If the load failed, the retry raises its error
        (:class:`~brogue.adapters.AdapterError`, :class:`BankFullError`, ...) and forgets the
        stream. Raises :class:`BankFullError` at once if every slot is held.

        A stream has one adapter: asking again for the same ``ref`` returns the same slot and
        does not count twice; asking for another one raises ``ValueError``.
        """
        claim = self._claim(as_ref(ref), stream_id)
        return claim if isinstance(claim, int) else None

    def acquire(self, ref: AdapterRef | str, *, stream_id: Hashable) -> int:
        """Like :meth:`try_acquire`, but blocks until the adapter is loaded; returns its slot."""
        claim = self._claim(as_ref(ref), stream_id)
        if isinstance(claim, int):
            return claim
        wait([claim])
        return self._collect(stream_id)

    async def acquire_async(self, ref: AdapterRef | str, *, stream_id: Hashable) -> int:
        """Like :meth:`acquire`, but awaits the load instead of blocking the event loop.

        If the awaiting task is cancelled, the stream is released; the load itself completes.
        """
        claim = self._claim(as_ref(ref), stream_id)
        if isinstance(claim, int):
            return claim
        try:
            await asyncio.wait([asyncio.wrap_future(claim)])  # returns when done, raises nothing
        except asyncio.CancelledError:
            self.release(stream_id)
            raise
        return self._collect(stream_id)

    def release(self, stream_id: Hashable) -> None:
        """End ``stream_id``'s use of its slot, or its wait for a load. Unknown ids are ignored.

        The adapter stays resident, now less held; it becomes evictable when nothing holds it.
        """
        with self._lock:
            claim = self._streams.pop(stream_id, None)
            if claim is None:
                return
            if claim.slot is not None:
                self._slots[claim.slot].streams.discard(stream_id)
                self._touch(claim.slot)
            elif claim.ref in self._loads:
                self._loads[claim.ref].streams.discard(stream_id)

    # -- adapters without streams ----------------------------------------------------------------

    def prefetch(self, ref: AdapterRef | str) -> Future:
        """Load ``ref`` in the background, held by nothing (so evictable); returns a ``Future``.

        The future's result is the slot the adapter was written to (or is already in), or it
        holds the load's error. Nothing waits for it unless the caller does.
        """
        ref = as_ref(ref)
        with self._lock:
            if ref in self._by_ref:
                self._touch(self._by_ref[ref])
                future = Future()
                future.set_result(self._by_ref[ref])
                return future
            return self._start_load(ref).future

    def pin(self, ref: AdapterRef | str) -> int:
        """Load ``ref`` if needed and pin it: it is never evicted until :meth:`unpin`. Blocks.

        Returns its slot. Pinning is not counted: one :meth:`unpin` undoes any number of pins.
        Raises the load's error, or :class:`BankFullError`.
        """
        ref = as_ref(ref)
        with self._lock:
            if ref in self._by_ref:
                slot = self._by_ref[ref]
                self._slots[slot].pinned = True
                self._touch(slot)
                return slot
            load = self._start_load(ref)
            load.pin = True
        return load.future.result()

    def unpin(self, ref: AdapterRef | str) -> None:
        """Let ``ref`` be evicted again once no stream uses it; a no-op if it is not pinned."""
        ref = as_ref(ref)
        with self._lock:
            if ref in self._by_ref:
                self._slots[self._by_ref[ref]].pinned = False
            elif ref in self._loads:
                self._loads[ref].pin = False

    # -- introspection ---------------------------------------------------------------------------

    def snapshot(self) -> dict[int, SlotInfo]:
        """The resident slots: ``{slot: SlotInfo(ref, refcount, pinned, last_used)}``."""
        with self._lock:
            return {
                n: SlotInfo(s.ref, len(s.streams), s.pinned, s.last_used) for n, s in sorted(self._slots.items())
            }

    def stats(self) -> BankStats:
        """The counters now, as an immutable snapshot."""
        with self._lock:
            return self._stats

    # -- internals: a docstring that ends "Under the lock." means: called with self._lock held ---

    def _claim(self, ref: AdapterRef, stream_id: Hashable) -> int | Future:
        """Register ``stream_id``'s claim on ``ref``: its slot, or the future of the load to wait for."""
        with self._lock:
            claim = self._streams.get(stream_id)
            if claim is not None:
                if claim.ref != ref:
                    raise ValueError(
                        f"stream {stream_id!r} already uses adapter {claim.ref}; release it before asking for {ref}"
                    )
                if claim.error is not None:
                    del self._streams[stream_id]
                    raise claim.error
                return claim.slot if claim.slot is not None else self._loads[ref].future
            if ref in self._by_ref:
                slot = self._by_ref[ref]
                self._count(hits=1)
                self._slots[slot].streams.add(stream_id)
                self._touch(slot)
                self._streams[stream_id] = _Stream(ref, slot)
                return slot
            if ref not in self._loads and not self._free and self._victim() is None:
                raise self._full_error(ref)
            self._count(misses=1)
            load = self._start_load(ref)
            load.streams.add(stream_id)
            self._streams[stream_id] = _Stream(ref)
            return load.future

    def _collect(self, stream_id: Hashable) -> int:
        """After the load a stream waited for: its slot, or raise the load's error."""
        with self._lock:
            claim = self._streams.get(stream_id)
            if claim is None:
                raise AdapterBankError("released", f"stream {stream_id!r} was released while its adapter loaded")
            if claim.error is not None:
                del self._streams[stream_id]
                raise claim.error
            return claim.slot

    def _start_load(self, ref: AdapterRef) -> _Load:
        """The load of ``ref`` in flight, started now if there is none. Under the lock."""
        load = self._loads.get(ref)
        if load is None:
            load = _Load(Future())
            load.future.set_running_or_notify_cancel()  # nobody can cancel it: others may wait on it
            self._loader.submit(self._load, ref, load)  # after close(), raises before anything is registered
            self._loads[ref] = load
        return load

    def _load(self, ref: AdapterRef, load: _Load) -> None:
        """Loader thread: read and validate ``ref`` unlocked, place it under the lock, then resolve
        the future outside the lock (its callbacks may call the bank)."""
        start = time.perf_counter()
        try:
            weights = self.store.load(ref, self.base)
            placed = self.on_load(weights) if self.on_load is not None else None
            with self._lock:
                slot = self._place(ref, weights, placed)
                elapsed = time.perf_counter() - start
                self._count(loads=1, load_seconds=elapsed)
                self._finish(ref, load, slot=slot)
        except BaseException as e:
            with self._lock:
                self._count(load_errors=1)
                self._finish(ref, load, error=e)
            log.warning("adapter %s failed to load: %s", ref, e)
            load.future.set_exception(e)
        else:
            log.info("adapter %s loaded into slot %d in %.1f ms", ref, slot, 1e3 * elapsed)
            load.future.set_result(slot)

    def _place(self, ref: AdapterRef, weights: AdapterWeights, placed=None) -> int:
        """Write ``weights`` into a free slot, else into the LRU unheld one. Under the lock."""
        if self._free:
            slot = min(self._free)
            self._free.remove(slot)
        else:
            slot = self._victim()
            if slot is None:
                raise self._full_error(ref)
            old = self._slots.pop(slot)
            del self._by_ref[old.ref]
            self._count(evictions=1)
            log.info("adapter %s evicted from slot %d for %s", old.ref, slot, ref)
        self.tensors.write(slot, weights.ln_weight, weights.ln_bias, weights.down, weights.up)
        if placed is not None:
            placed(slot)
        self._slots[slot] = _Slot(ref)
        self._by_ref[ref] = slot
        self._touch(slot)
        return slot

    def _finish(self, ref: AdapterRef, load: _Load, *, slot: int | None = None,
                error: BaseException | None = None) -> None:
        """Give the outcome of ``load`` to the streams and the pin waiting for it. Under the lock."""
        del self._loads[ref]
        if error is None:
            self._slots[slot].streams.update(load.streams)
            self._slots[slot].pinned = load.pin
        for stream_id in load.streams:
            self._streams[stream_id].slot, self._streams[stream_id].error = slot, error

    def _victim(self) -> int | None:
        """The least recently used slot that nothing holds, or ``None``. Under the lock."""
        unheld = [(s.tick, n) for n, s in self._slots.items() if not s.streams and not s.pinned]
        return min(unheld)[1] if unheld else None

    def _full_error(self, ref: AdapterRef) -> BankFullError:
        count = self.tensors.slots - 1
        if count == 0:
            return BankFullError(f"cannot load adapter {ref}: the bank has no adapter slots, only slot 0 (base)")
        holders = []
        for n, s in sorted(self._slots.items()):
            why = [f"{len(s.streams)} stream(s)"] if s.streams else []
            holders.append(f"slot {n} {s.ref}: {', '.join(why + ['pinned'] * s.pinned)}")
        return BankFullError(
            f"cannot load adapter {ref}: all {count} adapter slot(s) are held by live streams or pins "
            f"({'; '.join(holders)}); end streams, unpin adapters, or serve with more slots"
        )

    def _touch(self, slot: int) -> None:
        """Mark ``slot`` as used now. Under the lock."""
        self._ticks += 1
        self._slots[slot].tick, self._slots[slot].last_used = self._ticks, time.monotonic()

    def _count(self, **increments) -> None:
        self._stats = replace(
            self._stats, **{key: getattr(self._stats, key) + value for key, value in increments.items()}
        )
