"""Per-tenant LinearAdapters: the on-disk entry format of the adapter store (:mod:`.format`)."""

from brogue.adapters.format import (
    FORMAT,
    MANIFEST_FILE,
    TENSOR_NAMES,
    TENSORS_FILE,
    AdapterError,
    AdapterRef,
    AdapterWeights,
    BaseSpec,
    Manifest,
    content_hash,
    publish_adapter,
    read_adapter,
    validate_arrays,
    write_adapter,
)

__all__ = [
    "FORMAT",
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
