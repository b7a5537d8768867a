"""The model store: exported models served beside the deployment's base, one immutable entry per
``name@version`` (a full fine-tune, or any other export of a cache-aware model).

An entry is the folder ``brogue export`` writes, plus a manifest::

    MODEL_REPOSITORY/models/NAME/VERSION/
        model.json, weights.bin, weights.json, encoder*.onnx, ...   the export, unchanged
        manifest.json                                               the fields of :class:`ModelManifest`

The manifest lists every file of the export with its size and SHA-256, so an entry that was cut
short or corrupted on its way in is refused by name and file (:class:`ModelError`). Entries are
written into a hidden staging folder and renamed into place when complete (:class:`Staging`), so a
reader sees a whole entry or none, and never changes once written.

The package is split by job: :mod:`.manifest` (the schema, :class:`ModelRef`, :class:`ModelError`),
:mod:`.store` (publishing, listing, reading and checking entries) and :mod:`.budget` (what an entry
costs to serve, and which idle versions make room for it). No torch here: serving runs without it.
"""

from .budget import Footprint, LoadedModel, MemoryBudget, NoRoom, estimate_footprint
from .manifest import MANIFEST_FILE, ModelError, ModelManifest, ModelRef
from .store import ModelEntry, ModelStore, Staging

__all__ = [
    "MANIFEST_FILE",
    "Footprint",
    "LoadedModel",
    "MemoryBudget",
    "ModelEntry",
    "ModelError",
    "ModelManifest",
    "ModelRef",
    "ModelStore",
    "NoRoom",
    "Staging",
    "estimate_footprint",
]
