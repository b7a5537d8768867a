"""ONNX Runtime sessions for the exported graphs: :func:`make_session` picks the execution provider
("cpu", "cuda" or "tensorrt") and gives the session the model's shared weights."""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort

from .weights import SharedWeights

PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}


def make_session(path: str | Path, provider: str = "cpu", threads: int = 0, device_id: int = 0,
                 weights: SharedWeights | None = None, stream: int | None = None) -> ort.InferenceSession:
    """An ORT session on ``provider`` ("cpu", "cuda", "tensorrt") and GPU ``device_id``; fails clearly
    if the provider is unavailable. With ``weights``, the graph's initializers come from that one
    shared mapping (prepacking off, so no session keeps a private copy). ``stream``: the CUDA stream
    (a ``cudaStream_t`` as an int) a GPU provider computes on, so that its runs are ordered with the
    engine's own copies into and out of the state pool on that stream."""
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
    gpu_options = {"device_id": str(device_id)}
    if stream is not None:
        gpu_options["user_compute_stream"] = str(stream)
    providers = [(p, gpu_options) if p != "CPUExecutionProvider" else p for p in wanted if p in available]
    session = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
    # The session reads the shared tensors' memory for as long as it lives: keep the mapping alive.
    session.shared_weights = weights
    return session
