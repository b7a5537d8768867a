"""One engine for the encoder step, whatever runs it: the state pool, the bank and a backend.

:class:`Encoder` owns, on one device (:mod:`brogue.engine.memory`):

- the :class:`~brogue.engine.state_pool.StatePool` (every live stream's caches),
- the :class:`~brogue.engine.adapter_bank.BankTensors` (the adapter bank),
- the staging of one batch: features, lengths and adapter ids, filled on the host by the runner
  and copied to the device in one copy each (on a CPU host the host buffers are the bound ones),

and runs a batch with one of the backends, chosen by ``provider``:

==============  ====================================================  ======================
provider        backend                                               buffers
==============  ====================================================  ======================
``cpu``         ONNX Runtime, CPU provider                            numpy (host)
``cuda``        ONNX Runtime, CUDA provider, IOBinding by pointer     torch tensors on GPU
``tensorrt``    ONNX Runtime, TensorRT provider, IOBinding by pointer torch tensors on GPU
``torch-cuda``  the TorchScript steps on the GPU                      torch tensors on GPU
``torch-cpu``   the TorchScript steps on the CPU                      torch tensors on CPU
==============  ====================================================  ======================

Every input of a step has a fixed number of frames per (latency, first/steady): a shorter final
chunk is zero-padded, its ``length`` tells the encoder how much is real (causal subsampling and
length masks keep the padding out of the real frames), so output staging is allocated once.
Only the head's output and its lengths come back to the host.
"""

from __future__ import annotations

import numpy as np

from .adapter_bank import BankTensors
from .memory import HostMemory, memory_for
from .metadata import STREAM_INPUTS, Latency, ModelMeta
from .state_pool import StatePool

BACKENDS = ("cpu", "cuda", "tensorrt", "torch-cpu", "torch-cuda")
"""The engine's ``provider`` values (ONNX Runtime's own provider lists are in :mod:`brogue.engine.ort_session`)."""


def default_memory(provider: str) -> str:
    """Where ``provider``'s buffers live: "host" for ORT's CPU provider, else a torch device."""
    if provider not in BACKENDS:
        raise ValueError(f"unknown execution provider {provider!r}; choose from {', '.join(BACKENDS)}")
    return {"cpu": "host", "torch-cpu": "torch-cpu"}.get(provider, "torch-cuda")


def input_frames(latency: Latency, first: bool) -> int:
    """Mel frames of one step's input (pre-encode context included)."""
    if first:
        return latency.chunk_size[0] + latency.pre_encode_cache_size[0]
    return latency.shift_size[1] + latency.pre_encode_cache_size[1]


class Encoder:
    """The batched streaming step of one model, for streams whose caches live in :attr:`pool`.

    ``slots``: adapter bank depth. ``max_streams``: state-pool rows (live streams at once).
    ``max_batch``: rows per run (a larger group runs in several). ``memory``: override where the
    buffers live ("host", "torch-cpu", "torch-cuda"; default: the provider's own), e.g. to run ORT's
    CPU provider on torch tensors bound by pointer, as the GPU providers are.
    """

    def __init__(self, meta: ModelMeta, *, provider: str = "cpu", threads: int = 0, device_id: int = 0,
                 latencies: list[str] | None = None, weights=None, slots: int = 1, max_streams: int = 256,
                 max_batch: int = 64, memory: str | None = None):
        self.meta = meta
        self.provider = provider
        self.memory = memory_for(memory or default_memory(provider), device_id)
        self.bank = BankTensors.for_model(meta, slots, self.memory)
        served = meta.served_latencies(latencies)
        self._graphs = {(lat.name, first): lat.first_graph if first else lat.steady_graph
                        for lat in served.values() for first in (True, False)}
        self._frames = {(lat.name, first): input_frames(lat, first) for lat in served.values() for first in (True, False)}
        graphs = sorted(set(self._graphs.values()))
        if provider.startswith("torch"):
            from .torch_backend import TorchEncoder

            self.backend = TorchEncoder(meta, graphs, self.memory, threads=threads, weights=weights)
        else:
            from .ort_backend import OrtEncoder

            self.backend = OrtEncoder(meta, graphs, self.memory, provider=provider, threads=threads,
                                      device_id=device_id, weights=weights)
        # After the weights are placed: the pool takes what device memory is left, or says what fits.
        self.pool = StatePool(self.memory, max_streams, *meta.cache_shapes, max_batch=max_batch)
        self.max_batch = self.pool.max_batch
        n_mels = meta.mel.n_mels
        self.n_mels = n_mels
        most = max(self._frames.values())
        self._host_features = np.zeros(self.max_batch * n_mels * most, np.float32)
        self._host_lengths = np.zeros(self.max_batch, np.int64)
        self._host_ids = np.zeros(self.max_batch, np.int64)
        self._host_rows = np.zeros(self.max_batch, np.int64)
        if isinstance(self.memory, HostMemory):  # the bound buffers are these host ones
            self._features, self._lengths, self._ids = self._host_features, self._host_lengths, self._host_ids
        else:
            self._features = self.memory.zeros(self._host_features.shape, np.float32)
            self._lengths = self.memory.zeros((self.max_batch,), np.int64)
            self._ids = self.memory.zeros((self.max_batch,), np.int64)
        if not self.backend.allocates_outputs:
            self._allocate_outputs()

    def _allocate_outputs(self) -> None:
        """Size the backend's output staging from one probe run per graph (at load)."""
        row = self.pool.allocate()
        try:
            frames, dim = {}, 0
            for key in self._graphs:
                self._host_lengths[:1] = self._frames[key]
                self._host_ids[:1] = 0
                self._host_rows[:1] = row
                shape = self.backend.probe(self._graphs[key], self._inputs(key, 1, self.pool.batch(self._host_rows[:1])))
                frames[self._graphs[key]] = max(frames.get(self._graphs[key], 0), shape[1])
                dim = shape[2]
            self.backend.allocate_outputs(frames, dim, self.max_batch)
        finally:
            self.pool.release(row)

    # -- one run ---------------------------------------------------------------------------------

    def frames(self, latency: Latency, first: bool) -> int:
        """Input frames of a step (what :meth:`staging` gives room for per row)."""
        return self._frames[(latency.name, first)]

    def staging(self, latency: Latency, first: bool, n: int):
        """Host views to fill for a run of ``n`` rows: ``(features [n, n_mels, T], lengths [n],
        adapter slot ids [n], pool rows [n])``; ``T`` is :meth:`frames`. Valid until the next run."""
        if not 0 < n <= self.max_batch:
            raise ValueError(f"a run takes 1..{self.max_batch} rows, not {n}")
        t = self._frames[(latency.name, first)]
        feats = self._host_features[: n * self.n_mels * t].reshape(n, self.n_mels, t)
        return feats, self._host_lengths[:n], self._host_ids[:n], self._host_rows[:n]

    def run(self, latency: Latency, first: bool, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Run the ``n`` rows filled in :meth:`staging` (their pool rows ascending, each allocated);
        the rows' caches are read from and written back to the pool. Returns host arrays: the head
        output ``[n, T_out, *]`` (CTC log-probs or the encoder output) and its valid lengths ``[n]``."""
        key = (latency.name, first)
        batch = self.pool.batch(self._host_rows[:n])
        inputs = self._inputs(key, n, batch)
        if self.backend.allocates_outputs:
            head, lengths, *caches = self.backend.run(self._graphs[key], inputs)
            batch.store(*caches)
        else:
            head, lengths = self.backend.run(self._graphs[key], inputs, batch.outputs)
            batch.store()
        return self.memory.host(head), self.memory.host(lengths)

    def _inputs(self, key, n: int, batch) -> dict:
        """The step's inputs, in the graph's order, as device buffers."""
        size = n * self.n_mels * self._frames[key]
        if self._features is not self._host_features:
            self.memory.upload(self._features[:size], self._host_features[:size])
            self.memory.upload(self._lengths[:n], self._host_lengths[:n])
            self.memory.upload(self._ids[:n], self._host_ids[:n])
        stream = (self._features[:size].reshape(n, self.n_mels, self._frames[key]), self._lengths[:n], *batch.inputs)
        return {**dict(zip(STREAM_INPUTS, stream)), "adapter_ids": self._ids[:n], **self.bank.arrays}
