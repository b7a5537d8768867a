"""ONNX Runtime sessions for the exported graphs, and the bank tensors they read.

:class:`BankTensors` holds the adapter bank as preallocated numpy arrays wrapped once in ORT
``OrtValue``\\ s that share their memory: writing an adapter into a slot is a numpy copy into the
array, and every encoder run binds the same ``OrtValue``\\ s through ``IOBinding``, so the bank is
never copied per call.

:class:`Encoder` runs one batched streaming step of the first-chunk or steady-state graph of a
latency. :func:`make_session` chooses the execution provider: "cpu", "cuda" or "tensorrt".
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from .metadata import Latency, ModelMeta
from .weights import SharedWeights

PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}


def make_session(path: str | Path, provider: str = "cpu", threads: int = 0, device_id: int = 0,
                 weights: SharedWeights | None = None) -> ort.InferenceSession:
    """An ORT session on ``provider`` ("cpu", "cuda", "tensorrt") and GPU ``device_id``; fails clearly
    if the provider is unavailable. With ``weights``, the graph's initializers come from that one
    shared mapping (prepacking off, so no session keeps a private copy)."""
    if provider not in PROVIDERS:
        raise ValueError(f"unknown execution provider {provider!r}; choose from {sorted(PROVIDERS)}")
    wanted = PROVIDERS[provider]
    available = ort.get_available_providers()
    if wanted[0] not in available:
        raise RuntimeError(f"execution provider {wanted[0]} is not available here (have {available})")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    # No busy-waiting between runs: a streaming server runs one short step per chunk, and spinning
    # worker threads burn the cores the other processes (gateway, other model instances) need.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    if weights is not None:
        opts.add_session_config_entry("session.disable_prepacking", "1")
        for name, value in weights.initializers(Path(path).name).items():
            opts.add_initializer(name, value)
    providers = [(p, {"device_id": device_id}) if p != "CPUExecutionProvider" else p
                 for p in wanted if p in available]
    session = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
    # The session reads the shared tensors' memory for as long as it lives: keep the mapping alive.
    session.shared_weights = weights
    return session


class BankTensors:
    """The adapter bank's four stacked tensors, ``slots`` deep; slot 0 is the identity."""

    def __init__(self, n_layers: int, d_model: int, max_dim: int, slots: int):
        if slots < 1:
            raise ValueError("a bank needs at least one slot (slot 0, the base model)")
        self.n_layers, self.d_model, self.max_dim, self.slots = n_layers, d_model, max_dim, slots
        self.arrays = {
            "adapter_ln_weight": np.ones((slots, n_layers, d_model), dtype=np.float32),
            "adapter_ln_bias": np.zeros((slots, n_layers, d_model), dtype=np.float32),
            "adapter_down": np.zeros((slots, n_layers, max_dim, d_model), dtype=np.float32),
            "adapter_up": np.zeros((slots, n_layers, d_model, max_dim), dtype=np.float32),
        }
        self.ortvalues = {k: ort.OrtValue.ortvalue_from_numpy(v) for k, v in self.arrays.items()}

    @classmethod
    def for_model(cls, meta: ModelMeta, slots: int) -> "BankTensors":
        return cls(meta.n_layers, meta.d_model, meta.max_adapter_dim, slots)

    def write(self, slot: int, ln_weight, ln_bias, down, up) -> None:
        """Copy one adapter (dim ``r <= max_dim``, zero-padded here) into ``slot`` (never slot 0)."""
        if not 0 < slot < self.slots:
            raise IndexError(f"slot {slot} out of range 1..{self.slots - 1}")
        r = down.shape[1]
        if r > self.max_dim:
            raise ValueError(f"adapter dim {r} exceeds the bank's max dim {self.max_dim}")
        a = self.arrays
        a["adapter_ln_weight"][slot] = ln_weight
        a["adapter_ln_bias"][slot] = ln_bias
        a["adapter_down"][slot, :, :r] = down
        a["adapter_down"][slot, :, r:] = 0.0
        a["adapter_up"][slot, :, :, :r] = up
        a["adapter_up"][slot, :, :, r:] = 0.0

    def clear(self, slot: int) -> None:
        """Reset ``slot`` to the identity."""
        if not 0 < slot < self.slots:
            raise IndexError(f"slot {slot} out of range 1..{self.slots - 1}")
        a = self.arrays
        a["adapter_ln_weight"][slot] = 1.0
        a["adapter_ln_bias"][slot] = 0.0
        a["adapter_down"][slot] = 0.0
        a["adapter_up"][slot] = 0.0


class Encoder:
    """Batched streaming steps of one model's encoder graphs: both variants of each served latency.

    ``latencies``: the names served (default: every latency the model has); the graphs of the others
    are never loaded. ``weights``: the model's shared weights (None for graphs carrying their own).
    """

    def __init__(self, meta: ModelMeta, bank: BankTensors, provider: str = "cpu", threads: int = 0,
                 device_id: int = 0, *, latencies: list[str] | None = None, weights: SharedWeights | None = None):
        self.meta = meta
        self.bank = bank
        self._sessions: dict[str, ort.InferenceSession] = {}
        for lat in meta.served_latencies(latencies).values():
            for g in (lat.first_graph, lat.steady_graph):
                if g not in self._sessions:
                    self._sessions[g] = make_session(meta.root / g, provider, threads, device_id, weights)
        self.out_name = "logprobs" if meta.head == "ctc" else "encoded"

    def run(self, latency: Latency, first: bool, features: np.ndarray, lengths: np.ndarray,
            cache_last_channel: np.ndarray, cache_last_time: np.ndarray, cache_len: np.ndarray,
            adapter_ids: np.ndarray):
        """One step for a batch: returns (out [B,T,*], out_lengths, channel, time, len caches)."""
        sess = self._sessions[latency.first_graph if first else latency.steady_graph]
        io = sess.io_binding()
        io.bind_cpu_input("audio_signal", features)
        io.bind_cpu_input("length", lengths)
        io.bind_cpu_input("cache_last_channel", cache_last_channel)
        io.bind_cpu_input("cache_last_time", cache_last_time)
        io.bind_cpu_input("cache_last_channel_len", cache_len)
        io.bind_cpu_input("adapter_ids", adapter_ids)
        for name, value in self.bank.ortvalues.items():
            io.bind_ortvalue_input(name, value)
        for name in (self.out_name, "encoded_lengths", "cache_last_channel_next", "cache_last_time_next",
                     "cache_last_channel_next_len"):
            io.bind_output(name)
        sess.run_with_iobinding(io)
        return io.copy_outputs_to_cpu()
