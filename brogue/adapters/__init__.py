"""Per-tenant LinearAdapters and the adapter store's entry format: one NeMo ``LinearAdapter`` per
Conformer layer.

An entry is a directory with two files, and a third for a domain adapter::

    <entry>/
        adapter.safetensors   exactly four float32 tensors (L layers, d = d_model, r = adapter dim):
                              ln_weight [L, d], ln_bias [L, d], down [L, r, d], up [L, d, r]
        manifest.json         the fields of :class:`Manifest`
        lm.txt.gz             optional: the domain's sentences, a character LM that streams on this
                              adapter mix into the model's LM (``manifest.lm`` describes it)

Layer ``l`` maps its output ``y`` to ``y + up[l] @ silu(down[l] @ layer_norm(y))``, the layer norm
having weight ``ln_weight[l]`` and bias ``ln_bias[l]``.

The exporter writes entries with :func:`write_adapter`. The server checks them with
:func:`read_adapter` before writing them into a bank slot: cheap checks first (manifest,
compatibility with the base model, file type, size, SHA-256), tensors last. Every defect raises
:class:`AdapterError`, whose ``code`` is stable and whose message names the file. A pickle or
``torch.save`` file is recognised and refused; it is never unpickled.

No torch here: serving runs without it.

The package is split by job: :mod:`.manifest` (the schema and :class:`AdapterError`), :mod:`.arrays`
(the arrays' checks and a bank slot's padding), :mod:`.entry` (reading and writing entries) and
:mod:`.store` (the store: lookup by reference, listing, validation against the served model).
"""

from .arrays import AdapterWeights, validate_arrays
from .entry import content_hash, publish_adapter, read_adapter, write_adapter
from .manifest import (FORMAT, LM_FILE, MANIFEST_FILE, TENSOR_NAMES, TENSORS_FILE, AdapterError, AdapterRef, BaseSpec,
                       Manifest)

__all__ = [
    "FORMAT",
    "LM_FILE",
    "MANIFEST_FILE",
    "TENSORS_FILE",
    "TENSOR_NAMES",
    "AdapterError",
    "AdapterRef",
    "AdapterWeights",
    "BaseSpec",
    "Manifest",
    "content_hash",
    "publish_adapter",
    "read_adapter",
    "validate_arrays",
    "write_adapter",
]
