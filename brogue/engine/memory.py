"""Where the engine's buffers live: host memory (numpy) or a torch device.

The state pool, the adapter bank and the staging buffers of a batch are allocated once, at load, in
one :class:`Memory`. The engine then only ever moves rows between them with the few operations
below, so the same pool and binding code runs on a CPU host and on a GPU:

- :class:`HostMemory`: numpy arrays; ONNX Runtime's CPU provider reads them in place. No torch.
- :class:`TorchMemory`: torch tensors on ``cpu`` or ``cuda:N``; ONNX Runtime's CUDA and TensorRT
  providers bind them by device pointer, and the torch backend runs on them directly.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

GiB = 1 << 30


class DeviceMemoryError(MemoryError):
    """The engine's buffers do not fit the device; the message says how many stream slots would."""


def host_total_bytes() -> int:
    """``MemTotal`` of this host (Linux), or a very large number where it cannot be read."""
    return _meminfo("MemTotal:")


def host_available_bytes() -> int:
    """``MemAvailable`` of this host (Linux), or a very large number where it cannot be read."""
    return _meminfo("MemAvailable:")


def _meminfo(field: str) -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 1 << 62


class HostMemory:
    """numpy arrays in host memory."""

    device = "cpu"
    ort_device = ("cpu", 0)

    def zeros(self, shape, dtype) -> np.ndarray:
        return np.zeros(shape, dtype=dtype)

    def full(self, shape, value, dtype) -> np.ndarray:
        return np.full(shape, value, dtype=dtype)

    def take(self, src, rows, out) -> None:
        """``out[i] = src[rows[i]]``."""
        np.take(src, rows, axis=0, out=out)

    def put(self, dst, rows, src) -> None:
        """``dst[rows[i]] = src[i]``."""
        dst[rows] = src

    def upload(self, dst, host: np.ndarray) -> None:
        """Copy the host array ``host`` into ``dst`` (a buffer, or a view of one)."""
        if dst is not host:
            dst[...] = host

    def host(self, src) -> np.ndarray:
        """A host array with the contents of ``src`` (``src`` itself: it is already on the host)."""
        return src

    def pointer(self, a) -> int:
        return a.ctypes.data

    def dtype(self, a) -> np.dtype:
        return a.dtype

    def available_bytes(self) -> int:
        return host_available_bytes()

    def stream(self) -> None:
        return None

    def synchronize(self) -> None:
        pass


class TorchMemory:
    """torch tensors on ``device`` ("cpu", "cuda", "cuda:1", ...)."""

    def __init__(self, device: str = "cpu"):
        import torch

        self.torch = torch
        self.device = torch.device(device)
        if self.device.type == "cuda":
            if not torch.cuda.is_available():
                raise RuntimeError(f"device {device} requested, but torch sees no CUDA device")
            if self.device.index is None:
                self.device = torch.device("cuda", torch.cuda.current_device())
        self.ort_device = (self.device.type, self.device.index or 0)

    def _dtype(self, dtype):
        return getattr(self.torch, np.dtype(dtype).name)

    def zeros(self, shape, dtype):
        return self.torch.zeros(shape, dtype=self._dtype(dtype), device=self.device)

    def full(self, shape, value, dtype):
        return self.torch.full(shape, value, dtype=self._dtype(dtype), device=self.device)

    def take(self, src, rows, out) -> None:
        self.torch.index_select(src, 0, rows, out=out)

    def put(self, dst, rows, src) -> None:
        dst.index_copy_(0, rows, src)

    def upload(self, dst, host: np.ndarray) -> None:
        dst.copy_(self.torch.from_numpy(np.ascontiguousarray(host)))

    def host(self, src) -> np.ndarray:
        return src.numpy() if src.device.type == "cpu" else src.cpu().numpy()

    def pointer(self, a) -> int:
        return a.data_ptr()

    def dtype(self, a) -> np.dtype:
        return np.dtype(str(a.dtype).removeprefix("torch."))

    def stream(self) -> int | None:
        """The current CUDA stream (``cudaStream_t``), for ONNX Runtime to compute on; None on CPU."""
        return self.torch.cuda.current_stream(self.device).cuda_stream if self.device.type == "cuda" else None

    def available_bytes(self) -> int:
        if self.device.type == "cuda":
            return int(self.torch.cuda.mem_get_info(self.device)[0])
        return host_available_bytes()

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            self.torch.cuda.synchronize(self.device)


def memory_for(kind: str, device_id: int = 0):
    """``"host"`` (numpy), ``"torch-cpu"`` or ``"torch-cuda"`` (on GPU ``device_id``)."""
    if kind == "host":
        return HostMemory()
    if kind == "torch-cpu":
        return TorchMemory("cpu")
    if kind == "torch-cuda":
        return TorchMemory(f"cuda:{device_id}")
    raise ValueError(f"unknown memory {kind!r}; use host, torch-cpu or torch-cuda")
