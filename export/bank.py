"""The adapter bank as PyTorch code: what the exported encoder computes in each Conformer layer.

A NeMo ``LinearAdapter`` (``norm_position='pre'``, swish) at location ``post`` computes, on the
output ``y`` of a layer's ``norm_out``::

    y + W_up · SiLU(W_down · LN(y))

It cannot be merged into the base weights, so the exported encoder instead takes a *bank* of
adapters as graph inputs, one stacked tensor per parameter with a leading slot axis:

=====================  =======================  ===================================
input                  shape                    meaning
=====================  =======================  ===================================
``adapter_ids``        ``[B]`` int64            bank slot of each batch row
``adapter_ln_weight``  ``[S, L, d]`` float32    LayerNorm weight per slot and layer
``adapter_ln_bias``    ``[S, L, d]`` float32    LayerNorm bias
``adapter_down``       ``[S, L, r, d]`` float32  W_down (r = max adapter dim)
``adapter_up``         ``[S, L, d, r]`` float32  W_up
=====================  =======================  ===================================

Slot-major layout keeps one adapter contiguous, so loading it into a slot is one copy. Slot 0 holds
zeros in ``adapter_up`` and is the identity (the base model); a smaller adapter is zero-padded to
``r``, which is exact because SiLU(0) = 0. Each row gathers its own slot, then the layer runs two
batched matmuls: a batch mixing any adapters costs one encoder run.

:class:`BankHooks` installs this computation as forward hooks on each layer's ``norm_out``; the
tensors come from :meth:`BankHooks.bind` just before the encoder runs, so during ``torch.onnx.export``
they become graph inputs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bank_delta(y, ids, ln_weight, ln_bias, down, up, layer: int, d_model: int, eps: float = 1e-5):
    """The adapter output ``W_up · SiLU(W_down · LN(y))`` for each row of ``y [B, T, d]``."""
    w = ln_weight.index_select(0, ids)[:, layer]  # [B, d]
    b = ln_bias.index_select(0, ids)[:, layer]
    wd = down.index_select(0, ids)[:, layer]  # [B, r, d]
    wu = up.index_select(0, ids)[:, layer]  # [B, d, r]
    h = F.layer_norm(y, (d_model,), eps=eps)  # d_model must be a Python int for export
    h = h * w.unsqueeze(1) + b.unsqueeze(1)
    h = F.silu(torch.bmm(h, wd.transpose(1, 2)))  # [B, T, r]
    return torch.bmm(h, wu.transpose(1, 2))  # [B, T, d]


class BankHooks:
    """Forward hooks on every ``ConformerLayer.norm_out`` of a NeMo encoder, applying the bank."""

    def __init__(self, encoder):
        self.layers = list(encoder.layers)
        self.d_model = int(encoder.d_model)
        self._bound: tuple | None = None
        self._handles = [
            layer.norm_out.register_forward_hook(self._hook(i)) for i, layer in enumerate(self.layers)
        ]

    def bind(self, ids, ln_weight, ln_bias, down, up) -> None:
        """Use these bank tensors (and per-row slot ids) for the next forward passes."""
        self._bound = (ids, ln_weight, ln_bias, down, up)

    def unbind(self) -> None:
        self._bound = None

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def _hook(self, layer: int):
        def hook(module, inputs, output):
            if self._bound is None:
                return output
            return output + bank_delta(output, *self._bound, layer=layer, d_model=self.d_model)

        return hook


def identity_bank(slots: int, n_layers: int, d_model: int, max_dim: int) -> dict[str, torch.Tensor]:
    """A bank whose every slot is the identity (LN weight 1, everything else 0)."""
    return {
        "adapter_ln_weight": torch.ones(slots, n_layers, d_model),
        "adapter_ln_bias": torch.zeros(slots, n_layers, d_model),
        "adapter_down": torch.zeros(slots, n_layers, max_dim, d_model),
        "adapter_up": torch.zeros(slots, n_layers, d_model, max_dim),
    }
