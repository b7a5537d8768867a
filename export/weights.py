"""One copy of the weights for every graph of a model: ``weights.bin`` and its index.

``torch.onnx.export`` gives each graph its own copy of every weight, and above ONNX's 2 GB protobuf
limit it writes one file per tensor beside the graph, under names that collide between graphs (as
measured with NeMo 3.0 on these hosts). Brogue exports each graph into a private scratch folder, then
:class:`WeightsWriter` moves its initializers into one shared file:

- each initializer of at least :data:`INLINE_BELOW` bytes is identified by content (dtype, shape,
  SHA-256); the first graph that holds it appends it to ``weights.bin`` (64-byte aligned), later
  graphs reference the same bytes;
- the graph's initializer is renamed to one name per content, the same in every graph, and points
  into ``weights.bin`` through standard ONNX external data (``location``, ``offset``, ``length``),
  so any ONNX tool can still load a graph on its own;
- smaller initializers (scalars, shapes, masks) and ``Constant`` node values stay inside their graph
  (above 2 GB torch writes those to files of their own too: they are read back in);
- the TorchScript twin of each encoder graph (:meth:`WeightsWriter.add_torch_step`, for the torch
  backend) is saved without its weights, which it finds in the same file.

:meth:`WeightsWriter.finish` writes ``weights.json``: per tensor its offset, length, dtype and shape,
per graph the tensor names it uses, and the file's size and SHA-256, which the serving side checks
before it maps the file (:mod:`brogue.engine.weights`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from brogue.engine.weights import INDEX_FORMAT, INDEX_NAME, WEIGHTS_NAME

INLINE_BELOW = 4096
"""Initializers smaller than this many bytes stay inside their graph."""

ALIGN = 64


def _tensor_bytes(t, folder: Path) -> bytes:
    """The raw little-endian bytes of initializer ``t``, wherever the exporter put them."""
    from onnx import TensorProto, numpy_helper

    if t.data_location == TensorProto.EXTERNAL:
        info = {e.key: e.value for e in t.external_data}
        with open(folder / info["location"], "rb") as f:
            f.seek(int(info.get("offset", 0)))
            n = int(info["length"]) if "length" in info else -1
            return f.read(n)
    if t.HasField("raw_data"):
        return t.raw_data
    return numpy_helper.to_array(t).tobytes()


def _attribute_tensors(graph):
    """The tensors held in node attributes (``Constant`` values), subgraphs included."""
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _attribute_tensors(attr.g)
            for g in attr.graphs:
                yield from _attribute_tensors(g)


def _numpy_dtype(t) -> str:
    from onnx import helper

    return np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type)).str


class WeightsWriter:
    """Collects the initializers of a model's graphs into ``folder/weights.bin``."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.path = self.folder / WEIGHTS_NAME
        self._file = open(self.path, "wb")
        self._sha = hashlib.sha256()
        self._size = 0
        self._by_content: dict[tuple, str] = {}
        self.tensors: dict[str, dict] = {}
        self.graphs: dict[str, list[str]] = {}
        self.torch: dict[str, dict[str, list]] = {}  # TorchScript step -> {tensor: [stored name, transposed]}

    def _append(self, data: bytes) -> int:
        pad = -self._size % ALIGN
        if pad:
            self._write(b"\0" * pad)
        offset = self._size
        self._write(data)
        return offset

    def _write(self, data: bytes) -> None:
        self._file.write(data)
        self._sha.update(data)
        self._size += len(data)

    def _unique_name(self, wanted: str) -> str:
        name, n = wanted, 1
        while name in self.tensors:
            name, n = f"{wanted}__{n}", n + 1
        return name

    def _store(self, wanted: str, dtype: str, shape: list[int], data: bytes) -> str:
        """The name of the tensor with these contents, appended to ``weights.bin`` if it is new."""
        key = (dtype, tuple(shape), hashlib.sha256(data).hexdigest())
        name = self._by_content.get(key)
        if name is None:
            name = self._unique_name(wanted)
            self._by_content[key] = name
            self.tensors[name] = {"offset": self._append(data), "length": len(data), "dtype": dtype, "shape": shape}
        return name

    def _find(self, a: np.ndarray) -> tuple[str, bool] | None:
        """``(name, transposed)`` of a stored tensor equal to ``a``, or to its 2-D transpose."""
        key = (a.dtype.str, tuple(a.shape), hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest())
        if key in self._by_content:
            return self._by_content[key], False
        if a.ndim == 2:
            t = np.ascontiguousarray(a.T)
            key = (t.dtype.str, tuple(t.shape), hashlib.sha256(t.tobytes()).hexdigest())
            if key in self._by_content:
                return self._by_content[key], True
        return None

    def add_torch_step(self, traced, dest_name: str) -> Path:
        """Save the TorchScript module ``traced`` as ``folder/dest_name`` without its tensors of
        :data:`INLINE_BELOW` bytes or more. Each is found in ``weights.bin`` by content, as it is or as
        the 2-D transpose the ONNX graphs' MatMuls hold (or appended, when no graph holds it), and
        ``weights.json`` records where (its ``torch`` section). The module's tensors are the live
        model's: they are put back once the file is written."""
        import torch

        where: dict[str, list] = {}
        stripped = []
        for name, t in [*traced.named_parameters(), *traced.named_buffers()]:
            a = t.detach().cpu().numpy()
            if a.nbytes < INLINE_BELOW:
                continue
            found = self._find(a)
            if found is None:
                found = (self._store(name, a.dtype.str, list(a.shape), np.ascontiguousarray(a).tobytes()), False)
            where[name] = [found[0], found[1]]
            stripped.append((t, t.data))
        dest = self.folder / dest_name
        try:
            for t, _ in stripped:
                t.data = torch.empty(0, dtype=t.dtype)
            torch.jit.save(traced, str(dest))
        finally:
            for t, data in stripped:
                t.data = data
        self.torch[dest_name] = where
        return dest

    def add_graph(self, exported: str | Path, dest_name: str) -> Path:
        """Move the initializers of the ONNX file ``exported`` (and its external data files beside
        it) into ``weights.bin``, and write the graph, now referencing it, as ``folder/dest_name``."""
        import onnx
        from onnx import TensorProto

        exported = Path(exported)
        model = onnx.load(str(exported), load_external_data=False)
        renames: dict[str, str] = {}
        used: list[str] = []
        for t in model.graph.initializer:
            data = _tensor_bytes(t, exported.parent)
            if len(data) < INLINE_BELOW:
                if t.data_location == TensorProto.EXTERNAL:
                    del t.external_data[:]
                    t.data_location = TensorProto.DEFAULT
                    t.raw_data = data
                continue
            name = self._store(t.name, _numpy_dtype(t), [int(d) for d in t.dims], data)
            del data
            if name != t.name:
                renames[t.name] = name
            entry = self.tensors[name]
            t.name = name
            t.ClearField("raw_data")
            del t.external_data[:]
            t.data_location = TensorProto.EXTERNAL
            for k, v in (("location", WEIGHTS_NAME), ("offset", entry["offset"]), ("length", entry["length"])):
                e = t.external_data.add()
                e.key, e.value = k, str(v)
            used.append(name)
        for t in _attribute_tensors(model.graph):  # Constant values: inline, wherever torch put them
            if t.data_location == TensorProto.EXTERNAL:
                data = _tensor_bytes(t, exported.parent)
                del t.external_data[:]
                t.data_location = TensorProto.DEFAULT
                t.raw_data = data
        if renames:
            for node in model.graph.node:
                for i, name in enumerate(node.input):
                    if name in renames:
                        node.input[i] = renames[name]
        dest = self.folder / dest_name
        onnx.save(model, str(dest))
        self.graphs[dest_name] = used
        return dest

    def finish(self) -> dict:
        """Close ``weights.bin`` and write ``weights.json``; returns the summary model.json keeps."""
        self._file.close()
        summary = {"file": WEIGHTS_NAME, "index": INDEX_NAME, "bytes": self._size,
                   "sha256": self._sha.hexdigest(), "tensors": len(self.tensors)}
        index = {"format": INDEX_FORMAT, **summary, "tensors": self.tensors, "graphs": self.graphs,
                 "torch": self.torch}
        (self.folder / INDEX_NAME).write_text(json.dumps(index, separators=(",", ":")) + "\n")
        return summary

    def abort(self) -> None:
        if not self._file.closed:
            self._file.close()
