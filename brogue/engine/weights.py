"""The model's weights, mapped once and shared by every ONNX Runtime session of the process.

An export writes every weight of all its graphs (each latency, first-chunk and steady, and the RNNT
decoder and joint) once, into ``weights.bin``, indexed by ``weights.json`` (:mod:`brogue.export.weights`).
:class:`SharedWeights` checks the file against the index (size, then SHA-256: a truncated or corrupt
file is refused before anything runs), maps it read-only, and wraps each tensor in an ORT
``OrtValue`` without copying. Each session then takes its graph's initializers from those values
(``SessionOptions.add_initializer``) instead of reading its own copy, with MLAS prepacking off, since
prepacking would give each session a private packed copy again (measured: docs/performance.md).
The mapping is file-backed, so the pages are shared by every session of the process and by every
process (Triton model instances) that maps the same file.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from .metadata import read_tagged_json

WEIGHTS_NAME = "weights.bin"
INDEX_NAME = "weights.json"
INDEX_FORMAT = "brogue-weights/1"

_HASH_BLOCK = 64 << 20


class WeightsError(ValueError):
    """``weights.bin`` or ``weights.json`` is missing, truncated, corrupt or inconsistent."""


class SharedWeights:
    """The tensors of ``root/weights.bin``: read-only numpy views of one mapping (:meth:`array`),
    wrapped as ``OrtValue``\\ s for ONNX Runtime sessions (:meth:`initializers`).

    ``verify``: check the SHA-256 of the whole file (a few seconds per GB); the size is always
    checked. The values live in host memory: on ONNX Runtime's GPU providers each session places its
    own device copy; the torch backend uploads each tensor once (:mod:`brogue.engine.torch_backend`).
    """

    def __init__(self, root: str | Path, *, verify: bool = True):
        self.root = Path(root)
        try:
            index = read_tagged_json(self.root / INDEX_NAME, INDEX_FORMAT, WeightsError)
        except FileNotFoundError as e:
            raise WeightsError(str(e)) from None
        path = self.root / index["file"]
        if not path.is_file():
            raise WeightsError(f"{path}: missing")
        size = path.stat().st_size
        if size != index["bytes"]:
            raise WeightsError(f"{path}: {size} bytes, the export wrote {index['bytes']}: truncated or replaced")
        self._map = np.memmap(path, dtype=np.uint8, mode="r") if size else np.zeros(0, np.uint8)
        if verify:
            digest = sha256_of(self._map)
            if digest != index["sha256"]:
                raise WeightsError(f"{path}: SHA-256 {digest[:16]}... differs from the export's "
                                   f"{index['sha256'][:16]}...: the file is corrupt")
        self.path, self.bytes, self.graphs = path, size, index["graphs"]
        self._torch_index: dict[str, dict] = index.get("torch", {})
        self.arrays: dict[str, np.ndarray] = {}
        self._ortvalues: dict[str, object] = {}
        for name, t in index["tensors"].items():
            end = t["offset"] + t["length"]
            if end > size:
                raise WeightsError(f"{INDEX_NAME}: tensor {name!r} ends at byte {end}, past the file's {size}")
            self.arrays[name] = self._map[t["offset"]:end].view(np.dtype(t["dtype"])).reshape(t["shape"])

    @classmethod
    def open(cls, root: str | Path, **kw) -> "SharedWeights | None":
        """The shared weights of the export in ``root``, or None for an export whose graphs carry their
        own weights (no ``weights.json``)."""
        return cls(root, **kw) if (Path(root) / INDEX_NAME).is_file() else None

    def initializers(self, graph: str) -> dict[str, object]:
        """``{name: OrtValue}`` of the shared tensors that graph file ``graph`` uses."""
        try:
            names = self.graphs[graph]
        except KeyError:
            raise WeightsError(f"{INDEX_NAME} has no entry for graph {graph!r}") from None
        return {n: self._ortvalue(n) for n in names}

    def _ortvalue(self, name: str):
        v = self._ortvalues.get(name)
        if v is None:
            import onnxruntime as ort

            v = self._ortvalues[name] = ort.OrtValue.ortvalue_from_numpy(self.arrays[name])
        return v

    def torch_params(self, step: str) -> dict[str, tuple[str, bool]]:
        """``{parameter or buffer name: (tensor name, transposed)}`` of the TorchScript step file ``step``:
        where each of its stripped tensors lies in ``weights.bin`` (``transposed``: stored as its 2-D
        transpose, the layout the ONNX graphs' MatMuls read)."""
        try:
            return {k: (v[0], bool(v[1])) for k, v in self._torch_index[step].items()}
        except KeyError:
            raise WeightsError(f"{INDEX_NAME} has no entry for TorchScript step {step!r}: "
                               "re-export the model with this version of `brogue export`") from None


def sha256_of(buffer: np.ndarray) -> str:
    h = hashlib.sha256()
    for start in range(0, len(buffer), _HASH_BLOCK):
        h.update(memoryview(buffer[start:start + _HASH_BLOCK]))
    return h.hexdigest()
