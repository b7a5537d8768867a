"""The encoder graphs on ONNX Runtime (CPU, CUDA or TensorRT provider), bound to the engine's buffers.

Every input and output of a run is bound in place with ``IOBinding``: the features and the adapter
ids from the engine's staging, the caches from the state pool (a slice of it, or the gathered
rows), the bank from its buffers (which never move: binding is a pointer, not a copy), and the
outputs into staging buffers allocated at load. On the CPU provider the buffers are numpy arrays; on the CUDA and TensorRT
providers they are torch tensors on the GPU, bound by device pointer, and ORT computes on torch's
current CUDA stream, so its runs are ordered with the pool's gathers and scatters.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from .metadata import STATE_OUTPUTS, head_output
from .ort_session import make_session


class OrtEncoder:
    """ONNX Runtime sessions of the encoder ``graphs`` (file names in ``meta.root``)."""

    allocates_outputs = False

    def __init__(self, meta, graphs, memory, *, provider: str = "cpu", threads: int = 0,
                 device_id: int = 0, weights=None):
        self.memory = memory
        self.device_type, self.device_id = memory.ort_device
        if provider != "cpu" and self.device_type != "cuda":
            raise ValueError(f"execution provider {provider!r} needs its buffers on a CUDA device")
        stream = memory.stream()
        self.sessions = {g: make_session(meta.root / g, provider, threads, device_id, weights, stream)
                         for g in graphs}
        self.head_name = head_output(meta.head)
        self._io = {g: sess.io_binding() for g, sess in self.sessions.items()}
        self._head = None  # output staging, sized by :meth:`allocate_outputs`
        self._head_frames: dict[str, int] = {}

    def _bind(self, bind, name: str, a) -> None:
        bind(name, self.device_type, self.device_id, self.memory.dtype(a), list(a.shape), self.memory.pointer(a))

    def probe(self, graph: str, inputs: dict) -> tuple[int, ...]:
        """The head output's shape for ``inputs`` (one run, at load; outputs allocated by ORT)."""
        io = self._io[graph]
        for name, a in inputs.items():
            self._bind(io.bind_input, name, a)
        io.bind_output(self.head_name, self.device_type, self.device_id)
        for name in STATE_OUTPUTS:
            io.bind_output(name, self.device_type, self.device_id)
        # Give the arena back after the probe: a latency that is never streamed costs no run memory.
        opts = ort.RunOptions()
        opts.add_run_config_entry("memory.enable_memory_arena_shrinkage", f"{self.device_type}:{self.device_id}")
        self.sessions[graph].run_with_iobinding(io, opts)
        shape = tuple(io.get_outputs()[0].shape())
        io.clear_binding_outputs()
        return shape

    def allocate_outputs(self, head_frames: dict[str, int], head_dim: int, max_batch: int) -> None:
        """Output staging for ``max_batch`` rows: ``head_frames[graph]`` output frames per row."""
        self._head_frames = dict(head_frames)
        self._head_dim = head_dim
        self._head = self.memory.zeros((max_batch * max(head_frames.values()) * head_dim,), np.float32)
        self._lengths = self.memory.zeros((max_batch,), np.int64)

    def run(self, graph: str, inputs: dict, caches_out: tuple) -> tuple:
        """One run; returns ``(head [B, T_out, *], lengths [B])``, views of the output staging (valid
        until the next run); the next caches are written into ``caches_out``."""
        n = len(caches_out[0])
        head = self._head[: n * self._head_frames[graph] * self._head_dim].reshape(
            n, self._head_frames[graph], self._head_dim)
        lengths = self._lengths[:n]
        io = self._io[graph]
        for name, a in inputs.items():
            self._bind(io.bind_input, name, a)
        self._bind(io.bind_output, self.head_name, head)
        for name, a in zip(STATE_OUTPUTS, (lengths, *caches_out)):
            self._bind(io.bind_output, name, a)
        self.sessions[graph].run_with_iobinding(io)
        return head, lengths
