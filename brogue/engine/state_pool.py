"""The stream-state pool: every live stream's encoder caches, preallocated on the engine's device.

A cache-aware encoder carries three caches from one chunk to the next: ``cache_last_channel
[L, C, d]`` (attention), ``cache_last_time [L, d, K]`` (convolution) and ``cache_last_channel_len``.
:class:`StatePool` keeps them for up to ``rows`` streams in three preallocated buffers with a
leading row axis, in one :class:`~brogue.engine.memory.Memory` (host memory on a CPU host, GPU memory
with a GPU backend). A stream takes a row at its start (:meth:`StatePool.allocate`, zeroed) and
gives it back at its end (:meth:`StatePool.release`).

A batch (:meth:`StatePool.batch`) reads its rows' caches and writes the next ones back, on the device:

- rows that are consecutive (``[a, a+B)``, the common case once the runner sorts a batch by row and
  rows are handed out lowest-first) are passed to the encoder as a slice of the pool: nothing is
  gathered;
- other rows are gathered into a staging buffer, preallocated for ``max_batch`` rows;
- the encoder writes the next caches into a second staging buffer, which :meth:`PoolBatch.store`
  scatters back into the rows.

Nothing is allocated per batch, and the caches never cross to the host.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

import numpy as np

from brogue.asr_reply import CAPACITY_ERROR

from .memory import GiB, DeviceMemoryError

MiB = 1 << 20


class PoolFull(RuntimeError):
    """Every stream slot of the pool is taken: the engine is at its stream capacity."""


@dataclass
class PoolBatch:
    """The caches of one batch's rows: ``inputs`` to bind, ``outputs`` to bind, then :meth:`store`."""

    pool: "StatePool"
    rows: np.ndarray  # host int64 [B]
    start: int  # first row when the rows are consecutive, else -1
    index: object  # the rows as a device index (gathered batches only)
    inputs: tuple  # (channel [B, ...], time [B, ...], length [B]): pool slices or gathered staging
    outputs: tuple  # (channel, time, length) staging views [B, ...] the encoder writes into

    def store(self, channel=None, time=None, length=None) -> None:
        """Write the next caches back into the batch's rows: from ``outputs`` (the default), or from
        the given tensors (a backend that allocates its own outputs)."""
        p = self.pool
        new = (channel, time, length) if channel is not None else self.outputs
        if self.start >= 0:
            end = self.start + len(self.rows)
            for buf, value in zip(p.buffers, new):
                buf[self.start:end] = value
        else:
            for buf, value in zip(p.buffers, new):
                p.memory.put(buf, self.index, value)


class StatePool:
    """Encoder caches for ``rows`` streams, and staging for batches of up to ``max_batch`` rows.

    ``channel_shape`` and ``time_shape`` are one stream's cache shapes (model.json). Raises
    :class:`~brogue.engine.memory.DeviceMemoryError`, which says how many rows would fit, when the
    device does not hold them.
    """

    def __init__(self, memory, rows: int, channel_shape, time_shape, *, max_batch: int = 64):
        if rows < 1 or max_batch < 1:
            raise ValueError(f"a state pool needs at least one row and a batch of one (rows={rows}, "
                             f"max_batch={max_batch})")
        self.memory = memory
        self.rows = rows
        self.max_batch = max_batch = min(max_batch, rows)
        self.channel_shape, self.time_shape = tuple(channel_shape), tuple(time_shape)
        self.row_bytes = 4 * (int(np.prod(self.channel_shape)) + int(np.prod(self.time_shape))) + 8
        self.bytes = (rows + 2 * max_batch) * self.row_bytes
        self._check_fits()
        try:
            self.buffers = self._alloc(rows)
            self._gathered = self._alloc(max_batch)
            self._next = self._alloc(max_batch)
            self._index = memory.zeros((max_batch,), np.int64)
        except (MemoryError, RuntimeError) as e:  # numpy's MemoryError, torch's OutOfMemoryError
            if isinstance(e, RuntimeError) and "out of memory" not in str(e).lower():
                raise
            raise self._too_big(memory.available_bytes()) from e
        self.channel, self.time, self.length = self.buffers
        self._free = list(range(rows))  # a heap: the lowest free row first keeps live rows packed
        self.live: set[int] = set()

    def _alloc(self, n: int) -> tuple:
        m = self.memory
        return (m.zeros((n, *self.channel_shape), np.float32), m.zeros((n, *self.time_shape), np.float32),
                m.zeros((n,), np.int64))

    def _check_fits(self) -> None:
        available = self.memory.available_bytes()
        if self.bytes > available:
            raise self._too_big(available)

    def _too_big(self, available: int) -> DeviceMemoryError:
        fit = max(0, available // self.row_bytes - 2 * self.max_batch)
        return DeviceMemoryError(
            f"the stream-state pool for {self.rows} streams needs {self.bytes / GiB:.2f} GiB on "
            f"{self.memory.device} ({self.row_bytes / MiB:.2f} MiB per stream, plus {2 * self.max_batch} rows "
            f"of batch staging), and {available / GiB:.2f} GiB is free: {fit} streams fit; lower MAX_STREAMS "
            f"(or MAX_BATCH) to fit")

    # -- rows ------------------------------------------------------------------------------------

    @property
    def free(self) -> int:
        return len(self._free)

    def allocate(self) -> int:
        """A zeroed row for a new stream; :class:`PoolFull` when every row is taken."""
        if not self._free:
            raise PoolFull(f"{CAPACITY_ERROR}: all {self.rows} stream slots of this model instance "
                           "are in use; try again when a stream ends")
        row = heapq.heappop(self._free)
        for buf in self.buffers:
            buf[row] = 0
        self.live.add(row)
        return row

    def release(self, row: int) -> None:
        """Give ``row`` back (its contents are cleared when it is next allocated)."""
        if row not in self.live:
            raise ValueError(f"row {row} is not allocated")
        self.live.remove(row)
        heapq.heappush(self._free, row)

    # -- batches ---------------------------------------------------------------------------------

    def index(self, rows: np.ndarray):
        """``rows`` as an index on the pool's device (the preallocated index buffer's prefix)."""
        n = len(rows)
        if isinstance(self._index, np.ndarray):
            return rows
        self.memory.upload(self._index[:n], rows)
        return self._index[:n]

    def batch(self, rows: np.ndarray) -> PoolBatch:
        """The caches of ``rows`` (host int64, at most ``max_batch``, each allocated) for one run."""
        n = len(rows)
        if not 0 < n <= self.max_batch:
            raise ValueError(f"a batch takes 1..{self.max_batch} rows, not {n}")
        start = int(rows[0])
        consecutive = int(rows[-1]) - start == n - 1 and (n == 1 or bool(np.all(np.diff(rows) == 1)))
        index = None
        if consecutive:
            inputs = tuple(buf[start:start + n] for buf in self.buffers)
        else:
            start = -1
            index = self.index(rows)
            inputs = tuple(g[:n] for g in self._gathered)
            for buf, out in zip(self.buffers, inputs):
                self.memory.take(buf, index, out)
        return PoolBatch(self, rows, start, index, inputs, tuple(b[:n] for b in self._next))
