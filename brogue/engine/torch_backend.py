"""The encoder step on PyTorch (CPU or CUDA): the TorchScript twin of each exported ONNX graph.

``brogue export`` traces the same streaming step it exports to ONNX (``EncoderGraph``: encoder,
adapter bank, CTC head) with ``torch.jit.trace`` and saves it as ``<graph>.ts`` beside the ONNX
graph, with its weights stripped out: each parameter of 4 KB or more is found, by content, in the
model's one ``weights.bin`` (as it is, or as the 2-D transpose that the ONNX MatMuls read), and
``weights.json`` records where (:meth:`~brogue.engine.weights.SharedWeights.torch_params`).

:class:`TorchEncoder` loads the step files, and gives their parameters the tensors of
``weights.bin``: on CPU the read-only mapping itself (no copy); on CUDA one upload per tensor, shared
by every graph (all latencies, first-chunk and steady), so the device holds one copy of the weights.
Runs read the state pool and the bank where they lie; the step returns fresh cache tensors, which
the pool scatters back on the device.

This backend needs torch (the GPU image has it; Triton's PyTorch backend runs TorchScript too); the
ONNX Runtime CPU path does not.
"""

from __future__ import annotations

import warnings

import numpy as np


def step_file(graph: str) -> str:
    """The TorchScript step file beside ONNX graph ``graph`` (``encoder.70_6.onnx`` -> ``encoder.70_6.ts``)."""
    return graph.removesuffix(".onnx") + ".ts"


class StepLoader:
    """Loads TorchScript steps onto ``memory``'s device, their tensors taken from the shared
    ``weights`` (a :class:`~brogue.engine.weights.SharedWeights`): each tensor of ``weights.bin`` is
    placed on the device once, however many steps use it."""

    def __init__(self, weights, memory):
        self.weights, self.memory, self.torch = weights, memory, memory.torch
        # TorchScript's profiling executor re-profiles and re-optimizes a step for every new input
        # shape, and a streaming batch changes its row count at every run: the first runs of each
        # size took 2-5x longer (measured: docs/performance.md, "The GPU engine"). The simple
        # executor runs every shape alike. (Process-wide, and torch has no public switch for it.)
        self.torch._C._jit_set_profiling_executor(False)
        self.device_bytes = 0  # bytes of weights placed on the device (0 on CPU: the mapping is used)
        self._placed: dict[str, object] = {}

    def load(self, path):
        """The step at ``path`` (``<graph>.ts``), in eval mode, with its weights in place."""
        from .weights import WeightsError

        if not path.is_file():
            raise WeightsError(f"{path}: missing; the torch backend needs the TorchScript steps that "
                               "`brogue export` writes beside the ONNX graphs (re-export the model)")
        with warnings.catch_warnings():  # torch 2.13 marks TorchScript deprecated; Triton's PyTorch backend runs it
            warnings.simplefilter("ignore", DeprecationWarning)
            module = self.torch.jit.load(str(path), map_location=self.memory.device).eval()
        tensors = dict(module.named_parameters())
        tensors.update(module.named_buffers())
        for name, (key, transposed) in self.weights.torch_params(path.name).items():
            value = self._placed.get(key)
            if value is None:
                value = self._placed[key] = self._place(self.weights.arrays[key])
            if transposed:
                value = value.t()
            target = tensors.get(name)
            if target is None or target.dtype != value.dtype:
                raise WeightsError(f"{path}: tensor {name!r} does not match weights.bin's {key!r}")
            target.data = value
        return module

    def _place(self, array: np.ndarray):
        torch = self.torch
        with warnings.catch_warnings():  # the mapping is read-only, and a step never writes its weights
            warnings.simplefilter("ignore", UserWarning)
            t = torch.from_numpy(array)
        if self.memory.device.type != "cpu":
            try:
                t = t.to(self.memory.device)
            except torch.OutOfMemoryError:
                from .memory import GiB, DeviceMemoryError

                total = sum(a.nbytes for a in self.weights.arrays.values())
                raise DeviceMemoryError(
                    f"the model's weights ({total / GiB:.2f} GiB) do not fit on {self.memory.device}: "
                    f"{self.device_bytes / GiB:.2f} GiB placed, {self.memory.available_bytes() / GiB:.2f} GiB "
                    "free; serve it on a larger GPU or free the device") from None
            self.device_bytes += t.numel() * t.element_size()
        return t


class TorchEncoder:
    """The TorchScript steps of the encoder ``graphs`` on ``memory``'s device (a TorchMemory)."""

    allocates_outputs = True

    def __init__(self, meta, graphs, memory, *, threads: int = 0, weights=None):
        from .weights import WeightsError

        if weights is None:
            raise WeightsError(f"{meta.root}: the torch backend reads the export's shared weights.bin; this "
                               "export has none (re-export it)")
        self.torch = memory.torch
        if threads and memory.device.type == "cpu":
            self.torch.set_num_threads(threads)
        self.loader = StepLoader(weights, memory)
        self.modules = {g: self.loader.load(meta.root / step_file(g)) for g in graphs}

    @property
    def device_bytes(self) -> int:
        return self.loader.device_bytes

    def run(self, graph: str, inputs: dict, caches_out=None) -> tuple:
        """One step; returns ``(head [B, T_out, *], lengths [B], channel, time, length caches)``, new tensors."""
        with self.torch.inference_mode():
            return self.modules[graph](*inputs.values())
