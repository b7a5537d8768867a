"""The adapter bank's tensors, on the engine's device: what the encoder's bank inputs read.

The exported encoder takes the bank as four stacked inputs with a leading slot axis
(:mod:`brogue.export.bank`). :class:`BankTensors` allocates them once, on the engine's
:class:`~brogue.engine.memory.Memory`; every encoder run binds the same buffers, so the bank never
moves per run. Writing an adapter into a slot copies that slot alone (one adapter's bytes, from the
host); the other slots, which live streams read, are not touched. Slot 0 is the identity.
"""

from __future__ import annotations

import numpy as np

from .memory import HostMemory
from .metadata import ModelMeta

BANK_NAMES = ("adapter_ln_weight", "adapter_ln_bias", "adapter_down", "adapter_up")


class BankTensors:
    """The adapter bank's four stacked tensors, ``slots`` deep, in ``memory`` (host by default)."""

    def __init__(self, n_layers: int, d_model: int, max_dim: int, slots: int, memory=None):
        if slots < 1:
            raise ValueError("a bank needs at least one slot (slot 0, the base model)")
        self.n_layers, self.d_model, self.max_dim, self.slots = n_layers, d_model, max_dim, slots
        self.memory = memory or HostMemory()
        m = self.memory
        self.arrays = {
            "adapter_ln_weight": m.full((slots, n_layers, d_model), 1.0, np.float32),
            "adapter_ln_bias": m.zeros((slots, n_layers, d_model), np.float32),
            "adapter_down": m.zeros((slots, n_layers, max_dim, d_model), np.float32),
            "adapter_up": m.zeros((slots, n_layers, d_model, max_dim), np.float32),
        }
        self.slot_bytes = 4 * n_layers * (2 * d_model + 2 * max_dim * d_model)
        self.bytes = slots * self.slot_bytes
        self.bytes_written = 0  # bytes copied into the bank since it was made (one slot per write)
        # One slot's padded host image, reused by every write: nothing is allocated per swap.
        self._staging = {k: np.zeros(v.shape[1:], np.float32) for k, v in self.arrays.items()}

    @classmethod
    def for_model(cls, meta: ModelMeta, slots: int, memory=None) -> "BankTensors":
        return cls(meta.n_layers, meta.d_model, meta.max_adapter_dim, slots, memory)

    def _check(self, slot: int) -> None:
        if not 0 < slot < self.slots:
            raise IndexError(f"slot {slot} out of range 1..{self.slots - 1}")

    def write(self, slot: int, ln_weight, ln_bias, down, up) -> None:
        """Copy one adapter (dim ``r <= max_dim``, zero-padded here) into ``slot`` (never slot 0)."""
        self._check(slot)
        r = down.shape[1]
        if r > self.max_dim:
            raise ValueError(f"adapter dim {r} exceeds the bank's max dim {self.max_dim}")
        s = self._staging
        s["adapter_ln_weight"][...] = ln_weight
        s["adapter_ln_bias"][...] = ln_bias
        s["adapter_down"][:, :r] = down
        s["adapter_down"][:, r:] = 0.0
        s["adapter_up"][:, :, :r] = up
        s["adapter_up"][:, :, r:] = 0.0
        self._upload(slot)

    def clear(self, slot: int) -> None:
        """Reset ``slot`` to the identity."""
        self._check(slot)
        s = self._staging
        s["adapter_ln_weight"][...] = 1.0
        for k in ("adapter_ln_bias", "adapter_down", "adapter_up"):
            s[k][...] = 0.0
        self._upload(slot)

    def _upload(self, slot: int) -> None:
        for k, host in self._staging.items():
            self.memory.upload(self.arrays[k][slot], host)
        self.bytes_written += self.slot_bytes

    def host_slot(self, slot: int) -> dict[str, np.ndarray]:
        """A host copy of ``slot``'s four tensors (for checks)."""
        return {k: np.array(self.memory.host(v[slot])) for k, v in self.arrays.items()}
