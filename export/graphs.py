"""The modules that become ONNX graphs, and how one graph is traced.

- :class:`EncoderGraph`: one streaming encoder step with the adapter bank (and the CTC head when the
  graph serves CTC); its input and output names are :data:`ENCODER_INPUTS` and
  :func:`encoder_outputs` (spelled once, in :mod:`brogue.engine.metadata`);
- :class:`RNNTDecoderStep` and :class:`RNNTJointStep`: one prediction-network step and one joint step;
- :func:`onnx_export`: trace a module with the TorchScript exporter into a scratch folder, then hand
  its weights to the model's :class:`~brogue.export.weights.WeightsWriter`;
- :func:`torch_export`: the same trace saved as TorchScript, for the torch backend, its weights
  left in the same weights file.

Both the export (:mod:`brogue.export.nemo_export`) and its self-check (:mod:`brogue.export.verify`)
import from here, so neither imports the other.
"""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path

import torch
import torch.nn as nn

from brogue.engine.metadata import BANK_INPUTS, ENCODER_INPUTS, STREAM_INPUTS, encoder_outputs

from .bank import BankHooks, identity_bank
from .weights import WeightsWriter

OPSET = 17



def ctc_head(model, head: str):
    """The CTC decoder a graph serving ``head`` fuses in (a hybrid model's auxiliary one), or None."""
    if head != "ctc":
        return None
    return model.ctc_decoder if hasattr(model, "ctc_decoder") else model.decoder


class EncoderGraph(nn.Module):
    """Encoder streaming step with the adapter bank, and the CTC head when it serves CTC.

    Inputs and outputs are batch-first (NeMo's encoder keeps caches layer-first internally); their
    names are :data:`ENCODER_INPUTS` and :func:`encoder_outputs`.
    """

    def __init__(self, encoder, ctc, hooks: BankHooks):
        super().__init__()
        self.encoder = encoder
        self.ctc = ctc  # the CTC decoder when the graph serves CTC, else None
        self.hooks = hooks

    def forward(self, audio_signal, length, cache_last_channel, cache_last_time, cache_last_channel_len,
                adapter_ids, adapter_ln_weight, adapter_ln_bias, adapter_down, adapter_up):
        self.hooks.bind(adapter_ids, adapter_ln_weight, adapter_ln_bias, adapter_down, adapter_up)
        try:
            rets = self.encoder.forward_internal(
                audio_signal,
                length,
                cache_last_channel=cache_last_channel.transpose(0, 1),
                cache_last_time=cache_last_time.transpose(0, 1),
                cache_last_channel_len=cache_last_channel_len,
            )
            enc, enc_len, cch, ctm, clen = self.encoder.streaming_post_process(rets, keep_all_outputs=True)
        finally:
            self.hooks.unbind()
        out = self.ctc(encoder_output=enc) if self.ctc is not None else enc.transpose(1, 2)
        return out, enc_len, cch.transpose(0, 1), ctm.transpose(0, 1), clen


class RNNTDecoderStep(nn.Module):
    """One prediction-network step: last token (blank = start) and LSTM state -> output and state."""

    def __init__(self, decoder):
        super().__init__()
        self.decoder = decoder

    def forward(self, targets, h, c):
        g, (h2, c2) = self.decoder.predict(targets.unsqueeze(1), state=[h, c], add_sos=False)
        return g[:, 0, :], h2, c2


class RNNTJointStep(nn.Module):
    """The joint network on one encoder frame and one decoder output per row -> log-probs."""

    def __init__(self, joint):
        super().__init__()
        self.joint = joint

    def forward(self, encoder_frame, decoder_output):
        out = self.joint.joint(encoder_frame.unsqueeze(1), decoder_output.unsqueeze(1))[:, 0, 0, :]
        return out.log_softmax(dim=-1)


@contextlib.contextmanager
def exporting(model):
    """Export mode: NeMo's export-friendly module replacements, no type checks, no autograd."""
    from nemo.core.classes.common import typecheck
    from nemo.utils.export_utils import replace_for_export

    replace_for_export(model)
    typecheck.set_typecheck_enabled(enabled=False)
    try:
        with torch.no_grad():
            yield
    finally:
        typecheck.set_typecheck_enabled(enabled=True)


def onnx_export(module, args, weights: WeightsWriter, name: str, input_names, output_names, dynamic_axes):
    """Trace ``module`` into a private scratch folder (above 2 GB torch writes one file per tensor
    there, under names that would collide between graphs), then move its weights into the model's
    one weights file and write the graph as ``name``."""
    import warnings

    with tempfile.TemporaryDirectory(prefix="graph-", dir=weights.folder) as scratch:
        path = Path(scratch) / "graph.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module,
                tuple(args),
                str(path),
                input_names=list(input_names),
                output_names=list(output_names),
                dynamic_axes=dynamic_axes,
                opset_version=OPSET,
                do_constant_folding=True,
                dynamo=False,
            )
        weights.add_graph(path, name)


def torch_export(module, args, weights: WeightsWriter, name: str) -> None:
    """Trace ``module`` with ``torch.jit.trace`` (the same trace the ONNX export makes) and save it as
    ``name``, its weights left in the model's one weights file (:meth:`WeightsWriter.add_torch_step`)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(module, tuple(args), check_trace=False)
    weights.add_torch_step(traced, name)


def encoder_io(head: str):
    """Input names, output names and dynamic axes of the encoder graph serving ``head``: every
    stream tensor is batch-first, the bank's tensors slot-first; audio and the head's output have
    a time axis."""
    inputs = list(ENCODER_INPUTS)
    outputs = list(encoder_outputs(head))
    dyn = {name: {0: "B"} for name in (*STREAM_INPUTS, "adapter_ids", *outputs)}
    dyn.update({name: {0: "S"} for name in BANK_INPUTS if name != "adapter_ids"})
    dyn[STREAM_INPUTS[0]] = {0: "B", 2: "T"}  # the features: [B, n_mels, T]
    dyn[outputs[0]] = {0: "B", 1: "T_out"}
    return inputs, outputs, dyn


def example_inputs(enc, frames: int, n_layers: int, d_model: int, max_dim: int, n_mels: int):
    """Trace inputs: batch 2, 3 slots with non-trivial adapters, so nothing specialises to 1."""
    g = torch.Generator().manual_seed(0)
    B, S = 2, 3
    ch, tm, ln = enc.get_initial_cache_state(batch_size=B)
    bank = identity_bank(S, n_layers, d_model, max_dim)
    bank["adapter_down"][1:] = torch.randn(S - 1, n_layers, max_dim, d_model, generator=g) * 0.1
    bank["adapter_up"][1:] = torch.randn(S - 1, n_layers, d_model, max_dim, generator=g) * 0.1
    return (
        torch.randn(B, n_mels, frames, generator=g),
        torch.full((B,), frames, dtype=torch.int64),
        ch.transpose(0, 1).contiguous(),
        tm.transpose(0, 1).contiguous(),
        ln.to(torch.int64),
        torch.tensor([2, 1], dtype=torch.int64),
        *bank.values(),
    )
