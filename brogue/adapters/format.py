"""On-disk format of an adapter-store entry: one NeMo ``LinearAdapter`` per Conformer layer.

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
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, get_type_hints

import numpy as np
from safetensors import SafetensorError, deserialize
from safetensors.numpy import save as serialize_numpy

from brogue.engine.lm import text_bytes

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

FORMAT = "brogue-adapter/1"
TENSORS_FILE = "adapter.safetensors"
MANIFEST_FILE = "manifest.json"
TENSOR_NAMES = ("ln_weight", "ln_bias", "down", "up")
LM_FILE = "lm.txt.gz"
_LM_FIELDS = {"file": str, "sha256": str, "size_bytes": int, "order": int, "weight": float, "sentences": int}

_LAYOUTS = {"ln_weight": "[L, d]", "ln_bias": "[L, d]", "down": "[L, r, d]", "up": "[L, d, r]"}
_NAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
_VERSION_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
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
class AdapterRef:
    """An immutable adapter reference, ``name@version``: one content hash in the store.

    ``name`` matches ``[a-z0-9][a-z0-9._-]{0,63}`` and ``version`` matches
    ``[A-Za-z0-9][A-Za-z0-9._-]{0,63}``; otherwise the constructor raises ``ValueError``.
    """

    name: str
    version: str

    def __post_init__(self) -> None:
        if not _NAME_RE.fullmatch(self.name):
            raise ValueError(
                f"invalid adapter name {self.name!r}: expected 1 to 64 characters from [a-z0-9._-], "
                "the first from [a-z0-9]"
            )
        if not _VERSION_RE.fullmatch(self.version):
            raise ValueError(
                f"invalid adapter version {self.version!r}: expected 1 to 64 characters from "
                "[A-Za-z0-9._-], the first from [A-Za-z0-9]"
            )

    @classmethod
    def parse(cls, text: str) -> AdapterRef:
        """Parse ``"name@version"``; raise ``ValueError`` saying what is wrong with ``text``."""
        name, at, version = text.partition("@")
        if not at:
            raise ValueError(f"invalid adapter reference {text!r}: expected 'name@version'")
        try:
            return cls(name, version)
        except ValueError as e:
            raise ValueError(f"invalid adapter reference {text!r}: {e}") from None

    def __str__(self) -> str:
        return f"{self.name}@{self.version}"


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


@dataclass(frozen=True, eq=False)
class AdapterWeights:
    """A validated adapter: its manifest and its float32 arrays, laid out as in the module docstring;
    ``lm_path``: its verified domain LM file, or None."""

    manifest: Manifest
    ln_weight: np.ndarray
    ln_bias: np.ndarray
    down: np.ndarray
    up: np.ndarray
    lm_path: Path | None = None

    def padded(self, max_dim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Return ``(ln_weight, ln_bias, down [L, max_dim, d], up [L, d, max_dim])`` for a bank slot.

        ``down`` and ``up`` are zero-padded from ``r`` to ``max_dim``. This changes no output: the
        padded rows of ``down`` give 0, SiLU(0) = 0, and the padded columns of ``up`` are 0, so every
        sum only gains exact zeros. Raises ``AdapterError("too_large")`` if ``max_dim < r``.
        """
        n_layers, dim, d_model = self.down.shape
        if max_dim < dim:
            raise AdapterError(
                "too_large", f"adapter {self.manifest.ref}: dim {dim} does not fit max_dim {max_dim}"
            )
        down = np.zeros((n_layers, max_dim, d_model), np.float32)
        up = np.zeros((n_layers, d_model, max_dim), np.float32)
        down[:, :dim] = self.down
        up[:, :, :dim] = self.up
        return self.ln_weight, self.ln_bias, down, up


def content_hash(path: str | os.PathLike) -> str:
    """Hex SHA-256 of the file at ``path``, read in 1 MiB chunks: the manifest's ``sha256``."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def validate_arrays(
    arrays: Mapping[str, np.ndarray], base: BaseSpec | None = None, *, origin: str = "adapter arrays"
) -> tuple[int, int, int]:
    """Check a set of adapter arrays and return its ``(n_layers, d_model, dim)``.

    Checks, in this order, raising :class:`AdapterError` with ``origin`` in the message:
    the names are exactly :data:`TENSOR_NAMES` (``tensors``); every array is float32 (``dtype``);
    the shapes are ``ln_weight [L, d]``, ``ln_bias [L, d]``, ``down [L, r, d]``, ``up [L, d, r]``
    with ``L, d, r >= 1`` (``shape``); if ``base`` is given, ``L``, ``d`` and ``r`` fit it
    (``layers``, ``d_model``, ``too_large``); all values are finite (``non_finite``).
    """
    if arrays.keys() != set(TENSOR_NAMES):
        raise AdapterError(
            "tensors",
            f"{origin}: {_difference(TENSOR_NAMES, arrays, 'tensors')}; "
            f"expected exactly {list(TENSOR_NAMES)}",
        )
    for name in TENSOR_NAMES:
        if arrays[name].dtype != np.float32:
            raise AdapterError(
                "dtype", f"{origin}: tensor {name!r} is {arrays[name].dtype}, expected float32"
            )
    shapes = {name: tuple(arrays[name].shape) for name in TENSOR_NAMES}
    if len(shapes["ln_weight"]) != 2 or len(shapes["down"]) != 3:
        raise AdapterError(
            "shape",
            f"{origin}: ln_weight must be [L, d] and down [L, r, d], "
            f"got {list(shapes['ln_weight'])} and {list(shapes['down'])}",
        )
    (n_layers, d_model), dim = shapes["ln_weight"], shapes["down"][1]
    expected = {
        "ln_weight": (n_layers, d_model),
        "ln_bias": (n_layers, d_model),
        "down": (n_layers, dim, d_model),
        "up": (n_layers, d_model, dim),
    }
    for name in TENSOR_NAMES:
        if shapes[name] != expected[name]:
            raise AdapterError(
                "shape",
                f"{origin}: tensor {name!r} has shape {list(shapes[name])}, expected {list(expected[name])} "
                f"= {_LAYOUTS[name]} with L={n_layers}, d={d_model} (from ln_weight), r={dim} (from down)",
            )
    if min(n_layers, d_model, dim) < 1:
        raise AdapterError("shape", f"{origin}: L={n_layers}, d={d_model}, r={dim}; each must be >= 1")
    if base is not None:
        _check_base(n_layers, d_model, dim, base, origin)
    for name in TENSOR_NAMES:
        bad = ~np.isfinite(arrays[name])
        if bad.any():
            layers = np.flatnonzero(bad.reshape(n_layers, -1).any(axis=1)).tolist()
            raise AdapterError(
                "non_finite",
                f"{origin}: tensor {name!r} has {int(bad.sum())} NaN/Inf value(s), in layer(s) {layers}",
            )
    return n_layers, d_model, dim


def write_adapter(
    dest_dir: str | os.PathLike,
    arrays: Mapping[str, Any],
    *,
    name: str,
    version: str | None = None,
    kind: str = "",
    description: str = "",
    base_fingerprint: str,
    source: dict | None = None,
    lm_sentences: Iterable[str] | None = None,
    lm_order: int = 6,
    lm_weight: float = 0.5,
) -> Manifest:
    """Write a new store entry at ``dest_dir`` and return its manifest.

    ``lm_sentences``: the domain's text, written as the entry's LM (order ``lm_order``, mixed into
    the model's LM at ``lm_weight``) when given.

    ``arrays`` maps :data:`TENSOR_NAMES` to real-valued arrays; they are cast to float32 (values
    beyond its range become Inf and are refused) and checked with :func:`validate_arrays`.
    ``version`` defaults to ``"sha-"`` followed by the first 12 hex digits of the tensor file's
    SHA-256, so equal weights get equal versions.

    The entry is written into a hidden sibling directory, flushed to disk, then renamed to
    ``dest_dir``: a reader sees the whole entry or none. Nothing is created if validation fails.
    Raises :class:`AdapterError` for invalid arrays or manifest fields (name, version, ...),
    ``TypeError`` if ``source`` is not JSON-serialisable, and ``FileExistsError`` if ``dest_dir``
    exists: entries are immutable.
    """
    dest = Path(dest_dir)
    if dest.exists():
        raise FileExistsError(f"{dest}: adapter entry already exists; entries are immutable")
    origin = f"arrays for {dest}"
    tensors = {key: _as_float32(key, value, origin) for key, value in arrays.items()}
    n_layers, d_model, dim = validate_arrays(tensors, origin=origin)
    blob = serialize_numpy(tensors)
    sha256 = hashlib.sha256(blob).hexdigest()
    fields = {
        "format": FORMAT,
        "name": name,
        "version": _default_version(sha256) if version is None else version,
        "kind": kind,
        "description": description,
        "dim": dim,
        "n_layers": n_layers,
        "d_model": d_model,
        "dtype": "float32",
        "base_fingerprint": base_fingerprint,
        "sha256": sha256,
        "size_bytes": len(blob),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "source": {} if source is None else source,
    }
    lm_blob = None
    if lm_sentences is not None:
        lm_blob, n_sentences = text_bytes(lm_sentences)
        fields["lm"] = {"file": LM_FILE, "sha256": hashlib.sha256(lm_blob).hexdigest(), "size_bytes": len(lm_blob),
                        "order": lm_order, "weight": float(lm_weight), "sentences": n_sentences}
    manifest = Manifest.from_dict(fields, origin=f"manifest of {dest}")
    manifest_text = manifest.to_json()
    dest.parent.mkdir(parents=True, exist_ok=True)
    # A leading dot is never a valid entry name, so the temporary directory cannot be taken for one.
    tmp = dest.parent / f".{dest.name}.partial-{uuid.uuid4().hex}"
    tmp.mkdir()
    try:
        _write_synced(tmp / TENSORS_FILE, blob)
        if lm_blob is not None:
            _write_synced(tmp / LM_FILE, lm_blob)
        _write_synced(tmp / MANIFEST_FILE, manifest_text.encode())
        os.rename(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def publish_adapter(store_root: str | os.PathLike, arrays: Mapping[str, Any], *, name: str,
                    version: str | None = None, **fields: Any) -> Manifest:
    """Write a new entry into an adapter store laid out as ``store_root/NAME/VERSION/``.

    Same arguments and checks as :func:`write_adapter`; ``version`` defaults to the content-derived
    ``sha-...`` version, so publishing the same weights twice names the same entry (and the second
    time raises ``FileExistsError``).
    """
    if version is None:
        origin = f"arrays for adapter {name!r}"
        tensors = {key: _as_float32(key, value, origin) for key, value in arrays.items()}
        validate_arrays(tensors, origin=origin)
        version = _default_version(hashlib.sha256(serialize_numpy(tensors)).hexdigest())
    ref = AdapterRef(name, version)  # validates both before they become path components
    return write_adapter(Path(store_root) / ref.name / ref.version, arrays, name=name, version=version, **fields)


def _default_version(sha256: str) -> str:
    return f"sha-{sha256[:12]}"


def read_adapter(entry_dir: str | os.PathLike, base: BaseSpec | None) -> AdapterWeights:
    """Read and fully validate the entry at ``entry_dir``; ``base=None`` skips the base-model checks.

    Order: the manifest; its fingerprint, layer count, width and dim against ``base``; the tensor
    file's type (a pickle or ZIP is known by its first bytes), size and SHA-256 against the manifest; then
    the tensors (names, dtype, shapes against the manifest, finite values). The file is read once
    and the bytes that were hashed are the bytes that are parsed. Raises :class:`AdapterError`.
    """
    entry = Path(entry_dir)
    if not entry.is_dir():
        raise AdapterError("missing", f"{entry}: no such adapter entry directory")
    manifest_path, tensors_path = entry / MANIFEST_FILE, entry / TENSORS_FILE
    manifest = _read_manifest(manifest_path)
    if base is not None:
        if manifest.base_fingerprint != base.fingerprint:
            raise AdapterError(
                "wrong_base",
                f"{manifest_path}: adapter {manifest.ref} was trained on base model "
                f"{_short(manifest.base_fingerprint)}, but this base model is {_short(base.fingerprint)}",
            )
        _check_base(manifest.n_layers, manifest.d_model, manifest.dim, base, str(manifest_path))
    data = _read_tensor_bytes(tensors_path, manifest)
    try:
        views = deserialize(data)
    except SafetensorError as e:
        raise _unreadable(tensors_path, data, manifest, e) from None
    # Not safetensors.numpy.load: it raises KeyError on dtypes numpy lacks (BF16). Check first.
    for name, view in views:
        if view["dtype"] != "F32":
            raise AdapterError("dtype", f"{tensors_path}: tensor {name!r} is {view['dtype']}, expected F32")
    arrays = {name: np.frombuffer(view["data"], "<f4").reshape(view["shape"]) for name, view in views}
    dims = validate_arrays(arrays, origin=str(tensors_path))
    declared = (manifest.n_layers, manifest.d_model, manifest.dim)
    if dims != declared:
        raise AdapterError(
            "shape",
            f"{tensors_path}: tensors have (n_layers, d_model, dim) = {dims}, "
            f"{MANIFEST_FILE} says {declared}",
        )
    lm_path = None
    if manifest.lm:
        lm_path = entry / LM_FILE
        _verify_lm(lm_path, manifest.lm)
    return AdapterWeights(manifest, **arrays, lm_path=lm_path)


def _difference(expected: Iterable[str], actual: Iterable[str], noun: str) -> str:
    """Say how ``actual`` differs from ``expected``, e.g. "missing tensors ['up']"."""
    missing, unexpected = sorted(set(expected) - set(actual)), sorted(set(actual) - set(expected))
    parts = [(f"missing {noun}", missing), (f"unexpected {noun}", unexpected)]
    return "; ".join(f"{label} {names}" for label, names in parts if names)


def _check_base(n_layers: int, d_model: int, dim: int, base: BaseSpec, origin: str) -> None:
    if n_layers != base.n_layers:
        raise AdapterError(
            "layers", f"{origin}: adapter has {n_layers} layers, the base model has {base.n_layers}"
        )
    if d_model != base.d_model:
        raise AdapterError(
            "d_model", f"{origin}: adapter has d_model {d_model}, the base model has {base.d_model}"
        )
    if dim > base.max_dim:
        raise AdapterError(
            "too_large", f"{origin}: adapter dim {dim} exceeds the bank's max_dim {base.max_dim}"
        )


def _short(fingerprint: str) -> str:
    return fingerprint if len(fingerprint) <= 16 else fingerprint[:16] + "…"


def _as_float32(name: str, value: Any, origin: str) -> np.ndarray:
    array = np.asarray(value)
    if array.dtype.kind not in "fiu":
        raise AdapterError("dtype", f"{origin}: tensor {name!r} is {array.dtype}, not castable to float32")
    with np.errstate(over="ignore"):  # an overflow gives Inf, which validate_arrays reports
        return np.ascontiguousarray(array, dtype=np.float32)


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _read_manifest(path: Path) -> Manifest:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise AdapterError("missing", f"{path}: file not found") from None
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as e:  # RecursionError: absurdly nested JSON
        raise AdapterError("manifest", f"{path}: not valid JSON ({e})") from None
    return Manifest.from_dict(data, origin=str(path))


def _read_tensor_bytes(path: Path, manifest: Manifest) -> bytes:
    """Return the file's bytes after checking its type, size and SHA-256 against ``manifest``."""
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise AdapterError("missing", f"{path}: file not found") from None
    with f:
        # A safetensors file is an 8-byte header length, then a JSON header: byte 8 is "{".
        head = f.read(9)
        if len(head) == 9 and head[8:9] != b"{":
            raise _foreign(path, head)
        _check_size(path, os.fstat(f.fileno()).st_size, manifest.size_bytes)
        data = head + f.read()
    _check_hash(path, data, manifest.sha256)
    return data


def _verify_lm(path: Path, lm: dict) -> None:
    """Check a domain LM file's presence, size and SHA-256 against ``manifest.lm``."""
    if not path.is_file():
        raise AdapterError("missing", f"{path}: the manifest names a domain LM, but the file is missing")
    data = path.read_bytes()
    _check_size(path, len(data), lm["size_bytes"])
    _check_hash(path, data, lm["sha256"])


def _check_size(path: Path, size: int, declared: int) -> None:
    if size != declared:
        raise AdapterError(
            "truncated", f"{path}: file has {size} bytes, the manifest says {declared}: it was cut short or changed"
        )


def _check_hash(path: Path, data: bytes, declared: str) -> None:
    digest = hashlib.sha256(data).hexdigest()
    if digest != declared:
        raise AdapterError(
            "hash_mismatch",
            f"{path}: SHA-256 is {digest[:12]}…, the manifest says {declared[:12]}…: "
            "the file was modified or corrupted",
        )


def _foreign(path: Path, head: bytes) -> AdapterError:
    """The error for a file whose first 9 bytes are not those of a safetensors file."""
    if head.startswith(b"PK\x03\x04"):
        return AdapterError(
            "unsafe", f"{path}: is a ZIP archive (torch.save or numpy.savez), not safetensors; not opened"
        )
    if head[0] == 0x80 and 2 <= head[1] <= 5:
        return AdapterError(
            "unsafe", f"{path}: is a Python pickle (e.g. from torch.save), not safetensors; never unpickled"
        )
    return AdapterError(
        "not_safetensors", f"{path}: not a safetensors file (byte 8 is {head[8:9]!r}, not b'{{')"
    )


def _unreadable(path: Path, data: bytes, manifest: Manifest, error: SafetensorError) -> AdapterError:
    """The error for bytes the safetensors parser rejected: ``truncated`` if they are too short."""
    header_len = int.from_bytes(data[:8], "little")
    needed = 8 + header_len + 4 * manifest.n_layers * manifest.d_model * (2 + 2 * manifest.dim)
    if len(data) < needed:
        return AdapterError(
            "truncated",
            f"{path}: file is cut short: {len(data)} bytes, but its header and the manifest's shapes "
            f"need {needed} ({error})",
        )
    return AdapterError("not_safetensors", f"{path}: not a valid safetensors file ({error})")
