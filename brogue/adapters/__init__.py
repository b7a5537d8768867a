"""Per-tenant LinearAdapters: the on-disk entry format of the adapter store (:mod:`.format`).

The package re-exports exactly :data:`brogue.adapters.format.__all__`.
"""

from brogue.adapters import format as _format
from brogue.adapters.format import *  # noqa: F403 - the names in format.__all__

__all__ = list(_format.__all__)
