"""The model-store entry's schema: :class:`ModelRef`, ``manifest.json`` and :class:`ModelError`."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar

from brogue.refs import Ref

FORMAT = "brogue-model-entry/1"
MANIFEST_FILE = "manifest.json"
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
# a file of an export: relative, forward slashes, no hidden or parent parts
_FILE_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]{0,127}(/[A-Za-z0-9_][A-Za-z0-9_.+-]{0,127}){0,3}")


@dataclass(frozen=True)
class ModelRef(Ref):
    """An immutable model reference, ``name@version`` (the grammar is :class:`brogue.refs.Ref`'s)."""

    KIND: ClassVar[str] = "model"


class ModelError(ValueError):
    """A model entry, or an upload of one, is invalid. ``code`` names the defect, for programs:

    - ``missing``: no such entry, or a file of it is missing;
    - ``manifest``: ``manifest.json`` is unreadable, mistyped, or of another format;
    - ``incomplete``: a file is shorter or longer than declared, or the upload ended before every
      file was whole;
    - ``hash_mismatch``: a file's SHA-256 differs from the declared one;
    - ``bad_path``: a file name that could escape the entry, or one that was not declared;
    - ``not_a_model``: the files are not an export Brogue can serve (``model.json``, weights);
    - ``exists``: ``name@version`` is already in the store (entries are immutable);
    - ``too_big``: it does not fit the serving memory budget (the message has the numbers);
    - ``vocabulary``: a tenant's boost phrases cannot be written with its vocabulary;
    - ``wrong_base``: an adapter was trained on another model.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code

    def __reduce__(self):
        return type(self), (self.code, str(self))


def check_file_name(name: str) -> str:
    """``name`` if it is a safe relative file name of an entry; ``ModelError("bad_path")`` if not."""
    if not isinstance(name, str) or not _FILE_RE.fullmatch(name) or name == MANIFEST_FILE:
        raise ModelError("bad_path", f"file name {name!r} is not allowed in a model entry (relative, at most 4 "
                                     f"levels, characters [A-Za-z0-9_.+-], not {MANIFEST_FILE})")
    return name


@dataclass(frozen=True)
class FileSpec:
    size_bytes: int
    sha256: str


@dataclass(frozen=True)
class ModelManifest:
    """``manifest.json`` of an entry.

    ``fingerprint`` is the export's own (model.json): adapters trained on this model carry it.
    ``parent_fingerprint`` is the model it was fine-tuned from ("" if unknown). ``files`` maps every
    file of the export to its size and SHA-256.
    """

    name: str
    version: str
    fingerprint: str
    files: dict[str, FileSpec]
    kind: str = "full"
    description: str = ""
    parent_fingerprint: str = ""
    created_at: str = ""
    source: dict = field(default_factory=dict)
    format: str = FORMAT

    @property
    def ref(self) -> ModelRef:
        return ModelRef(self.name, self.version)

    @property
    def size_bytes(self) -> int:
        return sum(f.size_bytes for f in self.files.values())

    def to_json(self) -> str:
        d = asdict(self)
        d["size_bytes"] = self.size_bytes
        return json.dumps(d, indent=1, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str, origin: str) -> ModelManifest:
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as e:
            raise ModelError("manifest", f"{origin}: invalid JSON: {e}") from None
        if not isinstance(raw, dict) or raw.get("format") != FORMAT:
            raise ModelError("manifest", f"{origin}: format {raw.get('format') if isinstance(raw, dict) else None!r}, "
                                         f"expected {FORMAT!r}")
        raw.pop("size_bytes", None)
        try:
            files = {check_file_name(k): FileSpec(int(v["size_bytes"]), str(v["sha256"]))
                     for k, v in raw.pop("files").items()}
            m = cls(files=files, **raw)
            ModelRef(m.name, m.version)
        except ModelError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ModelError("manifest", f"{origin}: malformed manifest: {e}") from None
        for name, spec in m.files.items():
            if spec.size_bytes < 0 or not _SHA256_RE.fullmatch(spec.sha256):
                raise ModelError("manifest", f"{origin}: file {name}: bad size or sha256")
        return m

    @classmethod
    def read(cls, path: Path) -> ModelManifest:
        try:
            text = path.read_text()
        except FileNotFoundError:
            raise ModelError("missing", f"{path}: no manifest (not a model entry)") from None
        return cls.from_json(text, str(path))
