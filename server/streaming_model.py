"""The logic of the Triton model ``asr_streaming``: sequences, adapters and batched steps.

``model_repo/asr_streaming/1/model.py`` only converts Triton requests into :class:`ChunkRequest`\\ s
and :class:`ChunkResult`\\ s back; everything else is here, importable and tested without Triton.

Per sequence (Triton correlation id) a :class:`~brogue.engine.stream.StreamState` holds the mel
tail, the encoder caches, the decoder state and the adapter slot (Triton's implicit state does not
work in the python backend, so the state lives here). A START request creates it, END frees it,
and :meth:`StreamingModel.sweep` frees sequences idle for longer than ``idle_timeout`` (Triton's
own idle timeout does not tell the model); model.py runs it on a timer thread, not in ``execute()``.

One :meth:`StreamingModel.execute` call takes the requests of many sequences, whatever adapters
they use, and steps them together: one encoder run per graph needed (first chunk / steady state),
each row reading its own bank slot.

Adapters are taken from the bank without blocking (:meth:`AdapterBank.try_acquire`): a stream
whose adapter is still loading buffers its audio and gets empty results until the adapter is in
its slot, then catches up. Only a stream that *ends* before its adapter arrived waits for the load,
explicitly, since its final result needs it. Each failure (unknown or corrupt adapter, a full
bank, a request without START, bad audio) is an error for that request alone.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from brogue.adapters import AdapterError, AdapterRef
from brogue.adapters.store import AdapterStore
from brogue.asr_reply import ChunkReply
from brogue.boosting import from_wire as parse_boost
from brogue.errors import ErrorCode, tagged
from brogue.engine.runner import StreamingRunner
from brogue.engine.state_pool import PoolFull
from brogue.engine.stream import StreamState

from .adapters import AdapterBank, AdapterBankError

log = logging.getLogger(__name__)

PENDING = -1  # slot of a stream whose adapter is still loading


class RequestError(ValueError):
    """A request the model refuses; the message goes back to the client, tagged with ``code``."""

    def __init__(self, message: str, code: ErrorCode = ErrorCode.BAD_REQUEST):
        super().__init__(message)
        self.code = code


def error_code(e: Exception) -> ErrorCode:
    """The code a refused request's exception is reported with."""
    if isinstance(e, RequestError):
        return e.code
    if isinstance(e, PoolFull):
        return ErrorCode.CAPACITY
    if isinstance(e, (AdapterError, AdapterBankError)):
        return ErrorCode.ADAPTER
    return ErrorCode.BAD_REQUEST  # ValueError: an unknown latency, a malformed adapter reference


@dataclass
class ChunkRequest:
    """One Triton request: a chunk of one sequence."""

    corrid: int
    start: bool
    end: bool
    audio: np.ndarray | None  # float32 in [-1, 1] or int16, 16 kHz mono
    adapter: str = ""  # name@version, read on START; "" is the base model
    latency: str = ""  # a latency name from model.json, read on START; "" is the default
    boost: str = ""  # JSON [[phrase, boost], ...], read on START; "" boosts nothing


@dataclass
class ChunkResult(ChunkReply):
    """What one request gets back: the reply of docs/asr-streaming.md, or an error for it alone."""

    error: str | None = None


@dataclass
class ModelStats:
    executes: int = 0
    requests: int = 0
    max_requests_per_execute: int = 0
    mixed_sequence_executes: int = 0
    swept: int = 0
    errors: int = 0


class StreamingModel:
    """Sequences over one exported model, an adapter store and a bank of ``slots`` slots."""

    def __init__(self, model_dir: str | Path, store_dir: str | Path, *, slots: int = 8, provider: str = "cpu",
                 threads: int = 0, device_id: int = 0, idle_timeout: float = 60.0,
                 max_chunk_samples: int = 16000 * 10, pin: tuple[str, ...] = (), decoder: str = "auto",
                 latencies=None, weights: str = "auto", max_streams: int = 256, max_batch: int = 64):
        self.runner = StreamingRunner(model_dir, slots=slots, provider=provider, threads=threads,
                                      device_id=device_id, decoder=decoder, latencies=latencies, weights=weights,
                                      max_streams=max_streams, max_batch=max_batch)
        self.meta = self.runner.meta
        self.store = AdapterStore(store_dir)
        self.bank = AdapterBank(self.store, self.runner.bank, self.meta.fingerprint,
                                on_load=self.runner.slot_lm_setter)
        self.idle_timeout = idle_timeout
        self.max_chunk_samples = max_chunk_samples
        self.streams: dict[int, StreamState] = {}
        self.refs: dict[int, AdapterRef | None] = {}
        self.stats = ModelStats()
        self.lock = threading.Lock()  # execute() and the sweeper thread
        for ref in pin:
            self.bank.pin(ref)

    def close(self) -> None:
        with self.lock:
            for corrid in list(self.streams):
                self._drop(corrid)
        self.bank.close()

    # -- one Triton execute() --------------------------------------------------------------------

    def execute(self, requests: list[ChunkRequest]) -> list[ChunkResult]:
        with self.lock:
            return self._execute(requests)

    def _execute(self, requests: list[ChunkRequest]) -> list[ChunkResult]:
        self.stats.executes += 1
        self.stats.requests += len(requests)
        self.stats.max_requests_per_execute = max(self.stats.max_requests_per_execute, len(requests))
        self.stats.mixed_sequence_executes += len({r.corrid for r in requests}) > 1
        results = [ChunkResult() for _ in requests]
        work, owners = [], []
        for i, req in enumerate(requests):
            try:
                st, samples = self._admit(req)
            except (RequestError, AdapterError, AdapterBankError, PoolFull, ValueError) as e:
                results[i].error = tagged(error_code(e), str(e))
                self.stats.errors += 1
                log.info("sequence %s: %s", req.corrid, e)
                continue
            work.append((st, samples, req.end))
            owners.append(i)
        if work:
            try:
                outputs = self.runner.step(work)
            except Exception as e:  # an engine failure: fail these streams cleanly, keep the model up
                log.exception("engine step failed for sequences %s", [st.stream_id for st, _, _ in work])
                for (st, _, _), i in zip(work, owners):
                    results[i].error = tagged(ErrorCode.INTERNAL,
                                              f"internal error, stream {st.stream_id} closed: {e}")
                    self._drop(st.stream_id)
                self.stats.errors += len(work)
                work = []
                outputs = {}
            for (st, _, end), i in zip(work, owners):
                o = outputs[st.stream_id]
                r = results[i]
                r.tokens, r.times, r.confidences, r.blank_probs, r.text = (
                    o.tokens, o.times, o.confidences, o.blank_probs, o.text)
                r.frames_done = st.frames_out
                r.adapter_ready = st.slot != PENDING
                if requests[i].start:  # the gateway checks it serves this model's vocabulary
                    r.model_fingerprint = self.meta.fingerprint
                r.final = end
                if end:
                    self._drop(st.stream_id)
            for i, req in enumerate(requests):  # after this execute's ENDs: what a drain waits for
                if req.start and results[i].error is None:
                    results[i].live_sequences = len(self.streams)
        return results

    def _admit(self, req: ChunkRequest) -> tuple[StreamState, np.ndarray]:
        """Validate one request and return its stream state and float samples."""
        samples = self._samples(req)
        if req.start:
            if req.corrid in self.streams:  # a restarted sequence: the old state is gone
                self._drop(req.corrid)
            self._open(req)
        st = self.streams.get(req.corrid)
        if st is None:
            raise RequestError(f"sequence {req.corrid} has no state: send START first "
                               f"(or it was idle longer than {self.idle_timeout:g} s and was swept)",
                               ErrorCode.NO_STATE)
        if st.slot == PENDING:
            ref = self.refs[req.corrid]
            try:
                slot = self.bank.acquire(ref, stream_id=req.corrid) if req.end else \
                    self.bank.try_acquire(ref, stream_id=req.corrid)
            except Exception:
                self._drop(req.corrid)
                raise
            st.slot = PENDING if slot is None else slot
        return st, samples

    def _open(self, req: ChunkRequest) -> None:
        ref = AdapterRef.parse(req.adapter) if req.adapter else None
        latency = req.latency or None
        boost = parse_boost(req.boost) if req.boost else ()
        # ValueError for an unknown latency, a boost over the limits or one the vocabulary cannot write
        st = self.runner.open(req.corrid, slot=0, latency=latency, boost=boost)
        if ref is not None:
            self.store.resolve(ref)  # an unknown adapter fails now, not on the stream's next chunk
            slot = self.bank.try_acquire(ref, stream_id=req.corrid)  # raises at once for a full bank
            st.slot = PENDING if slot is None else slot
        self.streams[req.corrid] = st
        self.refs[req.corrid] = ref

    def _samples(self, req: ChunkRequest) -> np.ndarray:
        a = req.audio
        if a is None:
            return np.zeros(0, dtype=np.float32)
        a = np.asarray(a).reshape(-1)
        if a.size > self.max_chunk_samples:
            raise RequestError(f"chunk of {a.size} samples exceeds the limit of {self.max_chunk_samples} "
                               f"({self.max_chunk_samples / self.meta.sample_rate:g} s)")
        if a.dtype == np.int16:
            return a.astype(np.float32) / 32768.0
        if a.dtype != np.float32:
            raise RequestError(f"audio must be float32 or int16, not {a.dtype}")
        if not np.isfinite(a).all():
            raise RequestError("audio contains NaN or Inf")
        return a

    # -- cleanup ---------------------------------------------------------------------------------

    def _drop(self, corrid: int) -> None:
        st = self.streams.pop(corrid, None)
        if st is not None:
            self.runner.close(st)
        self.refs.pop(corrid, None)
        self.bank.release(corrid)

    def sweep(self, now: float | None = None) -> list[int]:
        """Free sequences idle longer than ``idle_timeout``; returns their ids."""
        now = time.monotonic() if now is None else now
        stale = [c for c, st in self.streams.items() if now - st.last_active > self.idle_timeout]
        for corrid in stale:
            log.info("sequence %s idle for %.0f s: swept", corrid, now - self.streams[corrid].last_active)
            self._drop(corrid)
        self.stats.swept += len(stale)
        return stale

    def sweep_locked(self) -> list[int]:
        """Sweep under the lock (from a timer thread) and log the counters when they changed."""
        with self.lock:
            swept = self.sweep()
            line = self.summary()
        if line != getattr(self, "_last_summary", None):
            log.info("%s", line)
            self._last_summary = line
        return swept

    def summary(self) -> str:
        """One line of counters: batching, adapter mixing, bank and sweeping."""
        s, r, b = self.stats, self.runner.stats, self.bank.stats()
        return (f"asr_streaming stats: executes={s.executes} requests={s.requests} "
                f"max_requests_per_execute={s.max_requests_per_execute} "
                f"mixed_sequence_executes={s.mixed_sequence_executes} encoder_runs={r.runs} "
                f"max_rows={r.max_rows} mixed_adapter_runs={r.mixed_adapter_runs} "
                f"max_adapters_in_run={r.max_adapters_in_run} live={len(self.streams)} swept={s.swept} "
                f"errors={s.errors} bank_hits={b.hits} bank_misses={b.misses} bank_evictions={b.evictions}")
