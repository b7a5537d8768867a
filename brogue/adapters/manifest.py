"""The adapter-store entry's schema: names, references and ``manifest.json``, and the error every
adapter defect raises. The entry layout is in :mod:`brogue.adapters`."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, ClassVar, get_type_hints

from brogue.refs import Ref

FORMAT = "brogue-adapter/1"
TENSORS_FILE = "adapter.safetensors"
MANIFEST_FILE = "manifest.json"
TENSOR_NAMES = ("ln_weight", "ln_bias", "down", "up")
LM_FILE = "lm.txt.gz"
_LM_FIELDS = {"file": str, "sha256": str, "size_bytes": int, "order": int, "weight": float, "sentences": int}
_SHA256_RE = re.compile(r"[0-9a-f]{64}")


class AdapterError(ValueError):
    """An adapter entry, or a set of adapter arrays, is invalid.

    ``code`` names the defect, for programs; the message says exactly what is wrong and in which
    file, for people. Codes:

    - ``missing``: the entry directory or one of its files does not exist;
    - ``manifest``: ``manifest.json`` is not valid JSON, lacks or mistypes a field, has an unknown
      field, or declares another format;
    - ``truncated``: the file size differs from the manifest, or the safetensors header or data
      is cut short;
    - ``hash_mismatch``: the file's SHA-256 differs from the manifest;
    - ``unsafe``: the file is a pickle or a ZIP archive (``torch.save``, ``numpy.savez``);
    - ``not_safetensors``: the file is not a well-formed safetensors file;
    - ``tensors``: a tensor is missing, or there is one beyond :data:`TENSOR_NAMES`;
    - ``shape``: shapes disagree with each other or with the manifest, or a dimension is 0;
    - ``dtype``: a tensor (or the manifest's ``dtype``) is not float32;
    - ``non_finite``: a tensor holds NaN or Inf;
    - ``wrong_base``: the adapter was trained on another base model;
    - ``layers``, ``d_model``: its layer count or width differs from the base model's;
    - ``too_large``: its dim exceeds the bank's ``max_dim``.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code

    def __reduce__(self):  # the default would call AdapterError(message) and lose the code
        return type(self), (self.code, str(self))


@dataclass(frozen=True)
class AdapterRef(Ref):
    """An immutable adapter reference, ``name@version``: one content hash in the store (the grammar
    is :class:`brogue.refs.Ref`'s)."""

    KIND: ClassVar[str] = "adapter"


@dataclass(frozen=True)
class BaseSpec:
    """What an exported base model accepts (from its ``model.json``).

    An adapter fits if it was trained on the model with this ``fingerprint``, has ``n_layers``
    layers of width ``d_model``, and a dim of at most ``max_dim``, the width of the bank's slots.
    """

    fingerprint: str
    n_layers: int
    d_model: int
    max_dim: int


@dataclass(frozen=True)
class Manifest:
    """The contents of ``manifest.json``. Every field but ``lm`` is required; no other field is
    allowed. ``lm`` is empty, or describes the entry's domain LM: ``file`` (always ``lm.txt.gz``),
    its ``sha256`` and ``size_bytes``, the n-gram ``order``, the mixing ``weight`` in (0, 1), and
    the number of ``sentences``."""

    format: str  # always FORMAT
    name: str
    version: str
    kind: str  # free text, e.g. "accent" or "domain"
    description: str
    dim: int  # r
    n_layers: int  # L
    d_model: int  # d
    dtype: str  # always "float32"
    base_fingerprint: str  # fingerprint of the base model the adapter was trained on
    sha256: str  # hex SHA-256 of the bytes of adapter.safetensors
    size_bytes: int  # size of adapter.safetensors
    created_at: str  # ISO 8601 time
    source: dict  # free provenance: training run, data, ...
    lm: dict = field(default_factory=dict)  # the domain LM, if any (see above)

    @property
    def ref(self) -> AdapterRef:
        return AdapterRef(self.name, self.version)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def from_dict(cls, data: Any, origin: str = MANIFEST_FILE) -> Manifest:
        """Validate decoded manifest JSON; raise :class:`AdapterError` whose message names ``origin``."""
        if not isinstance(data, dict):
            raise AdapterError("manifest", f"{origin}: expected a JSON object, got {type(data).__name__}")
        if data.get("format") != FORMAT:
            raise AdapterError(
                "manifest", f"{origin}: unsupported format {data.get('format')!r}, expected {FORMAT!r}"
            )
        types = get_type_hints(cls)
        data = {"lm": {}, **data}  # optional
        if data.keys() != types.keys():
            raise AdapterError("manifest", f"{origin}: {_difference(types, data, 'fields')}")
        for key, type_ in types.items():
            value = data[key]
            if not isinstance(value, type_) or (type_ is int and isinstance(value, bool)):
                raise AdapterError(
                    "manifest",
                    f"{origin}: field {key!r} must be {type_.__name__}, got {type(value).__name__}",
                )
        manifest = cls(**data)
        try:
            AdapterRef(manifest.name, manifest.version)
        except ValueError as e:
            raise AdapterError("manifest", f"{origin}: {e}") from None
        if manifest.dtype != "float32":
            raise AdapterError("dtype", f"{origin}: dtype is {manifest.dtype!r}, only 'float32' is supported")
        for key in ("n_layers", "d_model", "dim"):
            if getattr(manifest, key) < 1:
                raise AdapterError("manifest", f"{origin}: {key} must be >= 1, got {getattr(manifest, key)}")
        if not manifest.base_fingerprint:
            raise AdapterError("manifest", f"{origin}: base_fingerprint is empty")
        if not _SHA256_RE.fullmatch(manifest.sha256):
            raise AdapterError("manifest", f"{origin}: sha256 must be 64 lowercase hex digits")
        if manifest.size_bytes < 0:
            raise AdapterError("manifest", f"{origin}: size_bytes must be >= 0, got {manifest.size_bytes}")
        if manifest.lm:
            _check_lm_fields(manifest.lm, origin)
        try:
            datetime.fromisoformat(manifest.created_at)
        except ValueError:
            raise AdapterError(
                "manifest", f"{origin}: created_at {manifest.created_at!r} is not an ISO 8601 time"
            ) from None
        return manifest


def _check_lm_fields(lm: dict, origin: str) -> None:
    if lm.keys() != _LM_FIELDS.keys():
        raise AdapterError("manifest", f"{origin}: lm: {_difference(_LM_FIELDS, lm, 'fields')}")
    for key, type_ in _LM_FIELDS.items():
        v = lm[key]
        ok = isinstance(v, type_) or (type_ is float and isinstance(v, int))  # JSON may write 1.0 as 1
        if not ok or isinstance(v, bool):
            raise AdapterError("manifest",
                               f"{origin}: lm field {key!r} must be {type_.__name__}, got {type(v).__name__}")
    if lm["file"] != LM_FILE:
        raise AdapterError("manifest", f"{origin}: lm file must be {LM_FILE!r}, not {lm['file']!r}")
    if not _SHA256_RE.fullmatch(lm["sha256"]):
        raise AdapterError("manifest", f"{origin}: lm sha256 must be 64 lowercase hex digits")
    if not 1 <= lm["order"] <= 16 or not 0 < lm["weight"] < 1 or lm["sentences"] < 1 or lm["size_bytes"] < 1:
        raise AdapterError("manifest", f"{origin}: lm needs order in 1..16, weight in (0, 1), at least one "
                                       f"sentence and a non-empty file; got {lm}")


def _difference(expected: Iterable[str], actual: Iterable[str], noun: str) -> str:
    """Say how ``actual`` differs from ``expected``, e.g. "missing tensors ['up']"."""
    missing, unexpected = sorted(set(expected) - set(actual)), sorted(set(actual) - set(expected))
    parts = [(f"missing {noun}", missing), (f"unexpected {noun}", unexpected)]
    return "; ".join(f"{label} {names}" for label, names in parts if names)
