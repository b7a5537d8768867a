"""The model store on disk: ``ROOT/NAME/VERSION/`` entries, written through :class:`Staging`.

:meth:`ModelStore.stage` opens an entry for writing: the caller declares every file with its size
and SHA-256 first, then writes the bytes in order (a local copy, or the chunks of an upload to the
admin API). :meth:`Staging.commit` checks that every file is whole and hashes to what was declared,
and that the files are an export Brogue can serve, writes ``manifest.json`` and renames the hidden
staging folder into place. Anything short of a commit leaves the store as it was.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from brogue.engine.metadata import ModelMeta

from .manifest import MANIFEST_FILE, FileSpec, ModelError, ModelManifest, ModelRef, check_file_name

_BLOCK = 4 << 20
MAX_FILES = 256


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def export_files(folder: Path) -> dict[str, FileSpec]:
    """Every file of an export folder (``manifest.json`` aside) with its size and SHA-256."""
    folder = Path(folder)
    if not (folder / "model.json").is_file():
        raise ModelError("not_a_model", f"{folder}: no model.json (export the model with `brogue export`)")
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if rel == MANIFEST_FILE or rel.startswith(".") or "/." in rel:
            continue
        files[check_file_name(rel)] = FileSpec(path.stat().st_size, sha256_file(path))
    return files


@dataclass(frozen=True)
class ModelEntry:
    """One entry found by :meth:`ModelStore.list`: its manifest, or why it could not be read."""

    ref: ModelRef
    manifest: ModelManifest | None
    error: ModelError | None


class Staging:
    """An entry being written. Use as a context manager: leaving it without :meth:`commit` removes
    the staging folder."""

    def __init__(self, store: ModelStore, ref: ModelRef, files: Mapping[str, FileSpec]):
        if not files:
            raise ModelError("not_a_model", f"{ref}: no files declared")
        if len(files) > MAX_FILES:
            raise ModelError("not_a_model", f"{ref}: {len(files)} files declared, at most {MAX_FILES}")
        for name, spec in files.items():
            check_file_name(name)
            if spec.size_bytes < 0 or len(spec.sha256) != 64:
                raise ModelError("manifest", f"{ref}: file {name}: bad size or sha256")
        if "model.json" not in files:
            raise ModelError("not_a_model", f"{ref}: no model.json among the files")
        self.store, self.ref, self.files = store, ref, dict(files)
        if store.path(ref).exists():
            raise ModelError("exists", f"model {ref} is already in the store; entries are immutable, "
                                       "publish a new version")
        self.dir = store.root / ref.name / f".{ref.version}.partial-{uuid.uuid4().hex[:8]}"
        self.dir.mkdir(parents=True)
        self._written = {name: 0 for name in files}
        self._hashes = {name: hashlib.sha256() for name in files}
        self._open: tuple[str, object] | None = None
        self.committed = False
        self._fingerprint: str | None = None

    def __enter__(self) -> Staging:
        return self

    def __exit__(self, *exc) -> None:
        if not self.committed:
            self.abort()

    def write(self, name: str, offset: int, data: bytes) -> None:
        """Append ``data`` to file ``name`` at ``offset`` (which must be where it ends now)."""
        if name not in self.files:
            raise ModelError("bad_path", f"{self.ref}: file {name!r} was not declared")
        done, size = self._written[name], self.files[name].size_bytes
        if offset != done:
            raise ModelError("incomplete", f"{self.ref}: {name}: chunk at byte {offset}, expected {done} "
                                           "(chunks must come in order)")
        if done + len(data) > size:
            raise ModelError("incomplete", f"{self.ref}: {name}: more than the declared {size} bytes")
        if self._open is None or self._open[0] != name:
            self._close_file()
            path = self.dir / name
            path.parent.mkdir(parents=True, exist_ok=True)
            self._open = (name, open(path, "ab"))
        self._open[1].write(data)
        self._hashes[name].update(data)
        self._written[name] = done + len(data)

    def copy_from(self, folder: Path) -> None:
        """Write every declared file from ``folder`` (a local publish)."""
        for name in self.files:
            with open(Path(folder) / name, "rb") as f:
                offset = 0
                for block in iter(lambda: f.read(_BLOCK), b""):
                    self.write(name, offset, block)
                    offset += len(block)

    def _close_file(self) -> None:
        if self._open is not None:
            self._open[1].flush()
            os.fsync(self._open[1].fileno())
            self._open[1].close()
            self._open = None

    def verify(self) -> str:
        """Check that every file is whole and hashes to what was declared, and that the files are an
        export Brogue can serve; returns the export's fingerprint. ``ModelError`` otherwise. The
        staged export can then be read at :attr:`dir` (for checks of one's own) before :meth:`commit`."""
        if self._fingerprint is None:
            self._fingerprint = self._verify()
        return self._fingerprint

    def _verify(self) -> str:
        self._close_file()
        for name, spec in self.files.items():
            got = self._written[name]
            if got != spec.size_bytes:
                raise ModelError("incomplete", f"{self.ref}: {name}: {got} of {spec.size_bytes} bytes arrived "
                                               "(the upload was cut short)")
            if (path := self.dir / name).stat().st_size != got:
                raise ModelError("incomplete", f"{self.ref}: {name}: the staged file is not what was written")
            digest = self._hashes[name].hexdigest()
            if digest != spec.sha256:
                raise ModelError("hash_mismatch", f"{self.ref}: {path.name}: SHA-256 {digest[:16]}... differs from "
                                                  f"the declared {spec.sha256[:16]}... (corrupted on the way)")
        return _check_export(self.dir, self.files, str(self.ref))

    def commit(self, *, kind: str = "full", description: str = "", parent_fingerprint: str = "",
               source: dict | None = None) -> ModelManifest:
        """:meth:`verify` the entry and move it into place; returns its manifest. ``ModelError``
        otherwise (the caller's ``with`` then removes the staging folder)."""
        fingerprint = self.verify()
        manifest = ModelManifest(
            name=self.ref.name, version=self.ref.version, fingerprint=fingerprint, files=self.files, kind=kind,
            description=description, parent_fingerprint=parent_fingerprint,
            created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"), source=dict(source or {}))
        try:
            json.dumps(manifest.source)
        except TypeError as e:
            raise ModelError("manifest", f"{self.ref}: source is not JSON: {e}") from None
        (self.dir / MANIFEST_FILE).write_text(manifest.to_json())
        final = self.store.path(self.ref)
        try:
            os.rename(self.dir, final)  # atomic; fails if another publish got there first
        except OSError:
            if final.exists():
                raise ModelError("exists", f"model {self.ref} is already in the store; entries are immutable, "
                                           "publish a new version") from None
            raise
        self.committed = True
        return manifest

    def abort(self) -> None:
        self._close_file()
        shutil.rmtree(self.dir, ignore_errors=True)


def _check_export(folder: Path, files: Mapping[str, FileSpec], origin: str) -> str:
    """The export's fingerprint, once its ``model.json`` reads, every file it lists arrived, and its
    ``weights.bin`` is the one the export indexed; ``ModelError("not_a_model")`` otherwise."""
    try:
        meta = ModelMeta.load(folder)
        fingerprint = meta.fingerprint
        listed = list(meta.raw.get("files", []))
        weights = meta.raw.get("weights") or {}
    except (ValueError, KeyError, TypeError, FileNotFoundError) as e:
        raise ModelError("not_a_model", f"{origin}: not a Brogue export: {e}") from None
    missing = [f for f in listed if f not in files]
    if missing:
        raise ModelError("not_a_model", f"{origin}: model.json lists {', '.join(missing)}, which did not come")
    if weights:
        spec = files.get(weights.get("file", ""))
        if spec is None or spec.size_bytes != weights.get("bytes") or spec.sha256 != weights.get("sha256"):
            raise ModelError("not_a_model", f"{origin}: {weights.get('file')} is not the weights model.json was "
                                            "exported with (size or SHA-256 differ)")
    return fingerprint


class ModelStore:
    """Model entries under ``root``, laid out as ``root/NAME/VERSION/``. Hidden folders (staging)
    and names that are not a valid reference part are ignored."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"ModelStore({str(self.root)!r})"

    def path(self, ref: ModelRef) -> Path:
        return self.root / ref.name / ref.version

    def stage(self, ref: ModelRef, files: Mapping[str, FileSpec]) -> Staging:
        return Staging(self, ref, files)

    def publish_dir(self, folder: str | os.PathLike, ref: ModelRef, **fields) -> ModelManifest:
        """Copy the export at ``folder`` into the store as ``ref`` (``fields``: :meth:`Staging.commit`'s)."""
        files = export_files(Path(folder))
        with self.stage(ref, files) as staging:
            staging.copy_from(Path(folder))
            return staging.commit(**fields)

    def read(self, ref: ModelRef, *, verify: bool = False) -> ModelManifest:
        """The entry's manifest, after checking that every file is there at its size (and, with
        ``verify``, its SHA-256). ``ModelError`` for a missing or damaged entry."""
        entry = self.path(ref)
        if not entry.is_dir():
            raise ModelError("missing", f"no model {ref} in the store ({self.root})")
        m = ModelManifest.read(entry / MANIFEST_FILE)
        if m.ref != ref:
            raise ModelError("manifest", f"{entry / MANIFEST_FILE}: names {m.ref}, found at {ref}")
        for name, spec in m.files.items():
            path = entry / name
            if not path.is_file():
                raise ModelError("missing", f"{path}: missing from model {ref}")
            if path.stat().st_size != spec.size_bytes:
                raise ModelError("incomplete", f"{path}: {path.stat().st_size} bytes, the manifest says "
                                               f"{spec.size_bytes}")
            if verify and sha256_file(path) != spec.sha256:
                raise ModelError("hash_mismatch", f"{path}: SHA-256 differs from the manifest (corrupt)")
        return m

    def list(self) -> list[ModelEntry]:
        out = []
        if not self.root.is_dir():
            return out
        for name_dir in sorted(self.root.iterdir()):
            if not name_dir.is_dir() or name_dir.name.startswith("."):
                continue
            for version_dir in sorted(name_dir.iterdir()):
                if not version_dir.is_dir() or version_dir.name.startswith("."):
                    continue
                try:
                    ref = ModelRef(name_dir.name, version_dir.name)
                except ValueError:
                    continue
                try:
                    out.append(ModelEntry(ref, self.read(ref), None))
                except ModelError as e:
                    out.append(ModelEntry(ref, None, e))
        return out
