"""Store entries on disk: writing one atomically, publishing it under ``NAME/VERSION``, and reading
one back fully checked (cheap checks first, tensors last; a pickle is recognised, never unpickled)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError, deserialize
from safetensors.numpy import save as serialize_numpy

from brogue.engine.lm import text_bytes

from .arrays import AdapterWeights, _check_base, _short, as_float32, validate_arrays
from .manifest import (FORMAT, LM_FILE, MANIFEST_FILE, TENSORS_FILE, AdapterError, AdapterRef, BaseSpec,
                       Manifest)


def content_hash(path: str | os.PathLike) -> str:
    """Hex SHA-256 of the file at ``path``, read in 1 MiB chunks: the manifest's ``sha256``."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


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
    tensors = {key: as_float32(key, value, origin) for key, value in arrays.items()}
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
        tensors = {key: as_float32(key, value, origin) for key, value in arrays.items()}
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
    manifest = read_manifest(manifest_path)
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
        arrays = tensors_from_bytes(tensors_path, data)
    except SafetensorError as e:
        raise _unreadable(tensors_path, data, manifest, e) from None
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


def tensors_from_bytes(path: Path, data: bytes) -> dict[str, np.ndarray]:
    """The float32 tensors in safetensors ``data`` (read from ``path``), as read-only views; raises
    ``SafetensorError`` for bytes that are not safetensors and :class:`AdapterError` (``dtype``) for
    a tensor that is not F32. Never unpickles anything."""
    views = deserialize(data)
    # Not safetensors.numpy.load: it raises KeyError on dtypes numpy lacks (BF16). Check first.
    for name, view in views:
        if view["dtype"] != "F32":
            raise AdapterError("dtype", f"{path}: tensor {name!r} is {view['dtype']}, expected F32")
    return {name: np.frombuffer(view["data"], "<f4").reshape(view["shape"]) for name, view in views}


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def read_manifest(path: Path) -> Manifest:
    """The validated ``manifest.json`` at ``path`` (:class:`AdapterError` ``missing`` or ``manifest``)."""
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
