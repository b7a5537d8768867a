"""An adapter's arrays: their checks (names, dtype, layout, finite values, fit to the base model)
and their padding into a bank slot. No torch: serving runs without it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .manifest import TENSOR_NAMES, AdapterError, BaseSpec, Manifest, _difference

_LAYOUTS = {"ln_weight": "[L, d]", "ln_bias": "[L, d]", "down": "[L, r, d]", "up": "[L, d, r]"}


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


def as_float32(name: str, value: Any, origin: str) -> np.ndarray:
    array = np.asarray(value)
    if array.dtype.kind not in "fiu":
        raise AdapterError("dtype", f"{origin}: tensor {name!r} is {array.dtype}, not castable to float32")
    with np.errstate(over="ignore"):  # an overflow gives Inf, which validate_arrays reports
        return np.ascontiguousarray(array, dtype=np.float32)
