"""The ``brogue`` command: one module per command group, each importing what it needs when it runs,
so serving never imports torch.

- :mod:`.model`: ``export``, ``export-adapter``, ``lm``;
- :mod:`.serving`: ``triton``, ``serve``, ``demo``;
- :mod:`.streaming`: ``mic``, ``transcribe``;
- :mod:`.data`: ``corpus``, ``adapt``, ``eval``;
- :mod:`.finetune`: ``finetune``;
- :mod:`.adapters`: ``adapters push|assign|boost|list``;
- :mod:`.models`: ``models push|assign|pin|unpin|list``;
- :mod:`.bench`: ``bench``, ``faults``, ``soak``.
"""

from __future__ import annotations

import os

# numpy's OpenBLAS threads busy-wait after every small matrix product, and the streaming front end
# does one per chunk: one thread unless the caller chose otherwise (docs/performance.md).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

# Each module registers its commands when imported, in this order (the order of --help).
from . import model, serving, streaming, data, finetune, adapters, models, bench  # noqa: E402,F401,I001
from .common import app  # noqa: E402

__all__ = ["app"]
