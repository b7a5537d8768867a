"""What a model version costs to serve, and which idle versions make room for another (sans I/O).

:func:`estimate_footprint` adds up what one Triton instance of ``asr_streaming`` holds for an
export, from its ``model.json`` and the serving parameters: the weights (one private copy per ONNX
graph served, or one shared mapping, as the engine picks them), the stream-state pool, the adapter
bank, the character LM, and the fixed cost of a Python-backend process with ONNX Runtime
(:data:`PROCESS_BYTES`, measured: docs/models.md). :class:`MemoryBudget` decides, for a version to
load, which loaded versions to unload first: only idle ones (no live stream) that are not pinned,
least recently used first. When even that is not enough it raises :class:`NoRoom` with the numbers.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from brogue.engine.metadata import ModelMeta

MiB = 1 << 20
# RSS of a python-backend process serving the demo model greedily, before any stream, less its
# weights (126 MB measured, 28 MB of them weights): the interpreter, numpy, ONNX Runtime, Brogue.
PROCESS_BYTES = 96 * MiB
PRIVATE_WEIGHTS_BUDGET = 512 << 20  # the engine's rule (brogue.engine.runner.weights_mode)
# The character LM's tables against its gzipped text: the demo's 452 KB lm.txt.gz added 100 MB to
# the process's RSS (220 MB with the LM against 120 MB greedy, measured).
LM_BYTES_PER_FILE_BYTE = 220


@dataclass(frozen=True)
class Footprint:
    """Bytes one Triton instance needs for a model version, by part."""

    weights: int
    state_pool: int
    bank: int
    lm: int
    process: int = PROCESS_BYTES

    @property
    def total(self) -> int:
        return self.weights + self.state_pool + self.bank + self.lm + self.process

    def describe(self) -> str:
        return (f"{self.total / MiB:.0f} MiB (weights {self.weights / MiB:.0f}, state pool {self.state_pool / MiB:.0f}, "
                f"adapter bank {self.bank / MiB:.0f}, LM {self.lm / MiB:.0f}, process {self.process / MiB:.0f})")


def estimate_footprint(model_dir: str | Path, *, max_streams: int = 256, max_batch: int = 64, slots: int = 8,
                       latencies: Iterable[str] | None = None, weights: str = "auto", decoder: str = "auto") -> Footprint:
    """The :class:`Footprint` of serving the export at ``model_dir`` with these ``asr_streaming``
    parameters (MAX_STREAMS, MAX_BATCH, BANK_SLOTS, LATENCIES, WEIGHTS, DECODER)."""
    meta = ModelMeta.load(model_dir)
    served = meta.served_latencies(list(latencies) if latencies else None)
    graphs = 2 * len(served)
    wb = meta.weights_bytes
    if weights == "auto":
        weights = "private" if wb * graphs <= PRIVATE_WEIGHTS_BUDGET else "shared"
    weight_bytes = wb * graphs if weights == "private" else wb
    if meta.rnnt and weights == "private":
        weight_bytes += wb  # the decoder and joint sessions read their own copy too
    channel, time = meta.cache_shapes
    row = 4 * (_prod(channel) + _prod(time)) + 8
    pool = (max_streams + 2 * max_batch) * row
    d, r, layers = meta.d_model, meta.max_adapter_dim, meta.n_layers
    bank = slots * layers * (2 * d + 2 * r * d) * 4
    lm = 0
    if meta.ctc_lm and decoder in ("auto", "lm"):
        lm_file = Path(model_dir) / meta.ctc_lm.get("file", "")
        lm = lm_file.stat().st_size * LM_BYTES_PER_FILE_BYTE if lm_file.is_file() else 0
    return Footprint(weights=weight_bytes, state_pool=pool, bank=bank, lm=lm)


def _prod(shape) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


@dataclass
class LoadedModel:
    """A model version loaded in Triton, as the budget sees it."""

    key: str  # its model reference ("" for the deployment's base)
    bytes: int
    pinned: bool = False
    live: int = 0  # live streams on it
    last_used: float = 0.0  # monotonic time of its last stream start


class NoRoom(MemoryError):
    """A model version does not fit the budget, even after unloading every idle, unpinned version."""


class MemoryBudget:
    """``total`` bytes for the model versions of one Triton instance."""

    def __init__(self, total: int):
        if total <= 0:
            raise ValueError(f"a memory budget must be positive, not {total}")
        self.total = int(total)

    def check_alone(self, label: str, need: int, loaded: Iterable[LoadedModel]) -> None:
        """Raise :class:`NoRoom` unless ``need`` fits beside the pinned versions (the most room any
        unloading could ever make): what publishing checks."""
        pinned = [m for m in loaded if m.pinned and m.key != label]
        held = sum(m.bytes for m in pinned)
        if need + held > self.total:
            names = ", ".join(m.key or "base" for m in pinned) or "none"
            raise NoRoom(f"model {label} needs {need / MiB:.0f} MiB to serve, and the pinned models ({names}) "
                         f"hold {held / MiB:.0f} MiB of the {self.total / MiB:.0f} MiB budget: "
                         f"{(need + held - self.total) / MiB:.0f} MiB short")

    def plan(self, label: str, need: int, loaded: Iterable[LoadedModel]) -> list[str]:
        """The keys of the loaded versions to unload, least recently used first, so that ``need``
        more bytes fit; [] when they fit now. Only idle, unpinned versions are candidates.
        :class:`NoRoom` when even unloading all of them is not enough."""
        loaded = [m for m in loaded if m.key != label]
        free = self.total - sum(m.bytes for m in loaded)
        if need <= free:
            return []
        victims = []
        for m in sorted((m for m in loaded if not m.pinned and m.live == 0), key=lambda m: m.last_used):
            victims.append(m.key)
            free += m.bytes
            if need <= free:
                return victims
        busy = ", ".join(f"{m.key or 'base'} ({m.bytes / MiB:.0f} MiB, "
                         f"{'pinned' if m.pinned else f'{m.live} live'})" for m in loaded if m.key not in victims)
        raise NoRoom(f"model {label} needs {need / MiB:.0f} MiB; the budget is {self.total / MiB:.0f} MiB and "
                     f"{(self.total - free) / MiB:.0f} MiB stay held by models that are pinned or streaming: {busy}")
