"""The adapter store: a directory of immutable adapter entries, ``ROOT/NAME/VERSION/``.

Each entry is in the format of :mod:`brogue.adapters` (``adapter.safetensors`` plus
``manifest.json``). An :class:`~brogue.adapters.AdapterRef` ``name@version`` names exactly one
entry, and entries are never changed once written, so every server reading the same store agrees
on what a reference means.

:class:`AdapterStore` is the "weights" layer between a request's reference and the bank's slots
(:mod:`brogue.server.adapters.bank`): it resolves references, reads and validates entries, publishes new ones and lists
them. Every touch of the file system goes through four methods, ``_children``, ``_read_manifest``,
``_read_entry`` and ``_write_entry``; a store on an fsspec URL would override only those (reading
an entry into a local temporary directory first, since :func:`~brogue.adapters.read_adapter` reads
local files).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError

from brogue.engine.lm import read_text

from .arrays import AdapterWeights, as_float32, validate_arrays
from .entry import publish_adapter, read_adapter, read_manifest, tensors_from_bytes
from .manifest import MANIFEST_FILE, AdapterError, AdapterRef, BaseSpec, Manifest

__all__ = ["AdapterStore", "StoreEntry"]


@dataclass(frozen=True)
class StoreEntry:
    """One entry found by :meth:`AdapterStore.list`: its manifest, or why it could not be read."""

    ref: AdapterRef
    manifest: Manifest | None
    error: AdapterError | None


class AdapterStore:
    """Adapter entries under ``root``, laid out as ``root/NAME/VERSION/``.

    Directories whose name starts with a dot (such as the ``.VERSION.partial-...`` directories of a
    publish in progress) and names that are not a valid reference part are not entries and are
    ignored.
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"AdapterStore({str(self.root)!r})"

    # -- reading ---------------------------------------------------------------------------------

    def versions(self, name: str) -> list[str]:
        """The sorted versions of adapter ``name`` in the store; ``[]`` if there are none.

        Raises ``ValueError`` if ``name`` is not a valid adapter name.
        """
        AdapterRef(name, "0")  # validates the name before it becomes a path component
        return sorted(v for v in self._children(self.root / name) if _is_ref(name, v))

    def resolve(self, ref: AdapterRef | str) -> Path:
        """The entry directory of ``ref`` (``AdapterRef`` or ``"name@version"``).

        Raises ``AdapterError("missing")`` if the store has no such entry; the message lists the
        versions of that name which the store does have. Raises ``ValueError`` for a malformed
        reference string.
        """
        ref = as_ref(ref)
        entry = self.root / ref.name / ref.version
        if ref.version not in self._children(self.root / ref.name):
            known = self.versions(ref.name)
            have = f"known versions: {', '.join(known)}" if known else f"no adapter named {ref.name!r}"
            raise AdapterError("missing", f"adapter {ref} is not in the store {self.root} ({have})")
        return entry

    def load(self, ref: AdapterRef | str, base: BaseSpec) -> AdapterWeights:
        """Read ``ref`` and validate it fully against ``base``; see :func:`~brogue.adapters.read_adapter`.

        Also checks that the manifest names ``ref`` itself, so an entry directory that was copied
        or renamed to another ``NAME/VERSION`` cannot pass for that version. Raises
        :class:`~brogue.adapters.AdapterError` (``missing``, ``manifest``, ``wrong_base``, ...).
        """
        ref = as_ref(ref)
        entry = self.resolve(ref)
        weights = self._read_entry(entry, base)
        _check_names(weights.manifest, ref, entry)
        return weights

    def list(self, base: BaseSpec | None = None) -> list[StoreEntry]:
        """Every entry of the store, sorted by name then version.

        Without ``base``, only each manifest is read and checked (valid, and naming its own
        ``NAME/VERSION``). With ``base``, every entry is validated fully as :meth:`load` does,
        which reads every tensor file. An entry that fails is listed with its error and no
        manifest; it never stops the listing.
        """
        entries = []
        for name in sorted(n for n in self._children(self.root) if _is_ref(n, "0")):
            for version in self.versions(name):
                ref = AdapterRef(name, version)
                try:
                    if base is None:
                        manifest = self._read_manifest(self.root / name / version)
                        _check_names(manifest, ref, self.root / name / version)
                    else:
                        manifest = self.load(ref, base).manifest
                except AdapterError as e:
                    entries.append(StoreEntry(ref, None, e))
                else:
                    entries.append(StoreEntry(ref, manifest, None))
        return entries

    # -- writing ---------------------------------------------------------------------------------

    def publish(
        self,
        weights: Mapping[str, Any] | str | os.PathLike,
        *,
        base: BaseSpec,
        name: str | None = None,
        version: str | None = None,
        kind: str | None = None,
        description: str | None = None,
        source: dict | None = None,
        lm_sentences: list[str] | None = None,
        lm_order: int = 6,
        lm_weight: float = 0.5,
    ) -> Manifest:
        """Validate an adapter against ``base`` and write it as a new entry; return its manifest.

        ``weights`` is one of:

        - a mapping of the four tensor names to real arrays (cast to float32);
        - the path of a ``.safetensors`` file holding those four float32 tensors;
        - the directory of an existing entry, e.g. in another store. It is validated fully with
          :func:`~brogue.adapters.read_adapter`, then its tensors are written anew: the new
          manifest names the new entry. ``name``, ``version``, ``kind``, ``description`` and
          ``source`` default to the source manifest's, and its domain LM comes along.

        ``lm_sentences``: the domain's text, stored as the entry's LM (see
        :func:`~brogue.adapters.write_adapter`).

        Paths here are local files, read directly (the source is not this store's).
        ``name`` is required otherwise; ``version`` defaults to ``"sha-"`` and the first 12 hex
        digits of the tensor file's SHA-256, ``kind`` and ``description`` to ``""``. The entry
        appears atomically (see :func:`~brogue.adapters.write_adapter`) and only once it is valid.
        Raises :class:`~brogue.adapters.AdapterError` for an invalid or incompatible adapter,
        ``ValueError`` for a missing ``name``, and ``FileExistsError`` if the entry exists: entries
        are immutable, publish a new version instead.
        """
        if isinstance(weights, Mapping):
            origin = "adapter arrays"
            arrays = {key: as_float32(key, value, origin) for key, value in weights.items()}
        elif Path(weights).is_dir():
            read = read_adapter(weights, base)
            m = read.manifest
            arrays = {key: getattr(read, key) for key in ("ln_weight", "ln_bias", "down", "up")}
            origin = str(weights)
            name = m.name if name is None else name
            version = m.version if version is None else version
            kind = m.kind if kind is None else kind
            description = m.description if description is None else description
            source = m.source if source is None else source
            if lm_sentences is None and read.lm_path is not None:
                lm_sentences = read_text(read.lm_path)
                lm_order, lm_weight = m.lm["order"], m.lm["weight"]
        else:
            arrays, origin = _read_safetensors(Path(weights)), str(weights)
        if name is None:
            raise ValueError("publish needs a name for an adapter given as arrays or a tensor file")
        validate_arrays(arrays, base, origin=origin)
        return self._write_entry(
            arrays,
            name=name,
            version=version,
            kind=kind or "",
            description=description or "",
            base_fingerprint=base.fingerprint,
            source=source or {},
            lm_sentences=lm_sentences,
            lm_order=lm_order,
            lm_weight=lm_weight,
        )

    # -- file system access: all of it is here ---------------------------------------------------

    def _children(self, path: Path) -> list[str]:
        """Names of the visible subdirectories of ``path``; ``[]`` if it is not a directory."""
        try:
            with os.scandir(path) as it:
                return [e.name for e in it if not e.name.startswith(".") and e.is_dir()]
        except (FileNotFoundError, NotADirectoryError):
            return []

    def _read_manifest(self, entry: Path) -> Manifest:
        """The validated manifest of the entry at ``entry``, without reading its tensors."""
        return read_manifest(entry / MANIFEST_FILE)

    def _read_entry(self, entry: Path, base: BaseSpec) -> AdapterWeights:
        return read_adapter(entry, base)

    def _write_entry(self, arrays: Mapping[str, np.ndarray], **fields: Any) -> Manifest:
        return publish_adapter(self.root, arrays, **fields)


def as_ref(ref: AdapterRef | str) -> AdapterRef:
    """``ref`` as an :class:`AdapterRef` (parsing ``"name@version"``)."""
    return ref if isinstance(ref, AdapterRef) else AdapterRef.parse(ref)


def _is_ref(name: str, version: str) -> bool:
    try:
        AdapterRef(name, version)
    except ValueError:
        return False
    return True


def _check_names(manifest: Manifest, ref: AdapterRef, entry: Path) -> None:
    if manifest.ref != ref:
        raise AdapterError(
            "manifest",
            f"{entry / MANIFEST_FILE}: the manifest names {manifest.ref}, but the entry is stored as "
            f"{ref}: an entry directory was copied or renamed; publish it as a new version instead",
        )


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """The float32 tensors of a loose safetensors file at ``path``. Never unpickles anything."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise AdapterError("missing", f"{path}: file not found") from None
    try:
        return tensors_from_bytes(path, data)
    except SafetensorError as e:
        raise AdapterError("not_safetensors", f"{path}: not a valid safetensors file ({e})") from None
