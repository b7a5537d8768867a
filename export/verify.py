"""Export-time self-check: the ONNX graphs against the PyTorch model they came from.

For each latency, three streaming steps (the first-chunk graph, then two steady steps, caches carried
over) run on random features for a batch of two rows with different bank slots, in PyTorch (NeMo's
own encoder code with the bank hooks), in ONNX Runtime, and in the TorchScript twin of each graph
with its weights read from ``weights.bin`` (the torch backend's path). The largest output difference
of each is recorded in ``model.json``; above ``tol`` the export fails.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from brogue.engine.memory import TorchMemory
from brogue.engine.ort_session import make_session
from brogue.engine.torch_backend import StepLoader, step_file
from brogue.engine.weights import SharedWeights

from .bank import BankHooks, identity_bank
from .graphs import ENCODER_INPUTS, EncoderGraph, ctc_head, exporting


class VerificationError(RuntimeError):
    pass


def verify_encoder(model, head: str, meta: dict, out: Path, tol: float = 1e-3) -> dict[str, float]:
    """The largest differences between PyTorch and, through the shared weights as served, ONNX Runtime
    and the TorchScript steps, over every latency's first and steady graphs (the ``checks`` of
    model.json); raises :class:`VerificationError` above ``tol``."""
    enc = model.encoder
    L, d, r = meta["encoder"]["n_layers"], meta["encoder"]["d_model"], meta["adapters"]["max_dim"]
    n_mels = meta["features"]["n_mels"]
    g = torch.Generator().manual_seed(1)
    bank = identity_bank(3, L, d, r)
    bank["adapter_down"][1:] = torch.randn(2, L, r, d, generator=g) * 0.2
    bank["adapter_up"][1:] = torch.randn(2, L, d, r, generator=g) * 0.2
    ids = torch.tensor([0, 2], dtype=torch.int64)
    worst = 0.0
    hooks = BankHooks(enc)
    graph = EncoderGraph(enc, ctc_head(model, head), hooks).eval()
    default = list(enc.att_context_size)
    weights = SharedWeights.open(out)
    loader = StepLoader(weights, TorchMemory("cpu"))
    sessions, steps = {}, {}
    worst_step = 0.0
    try:
        with exporting(model):
            for lat in meta["latencies"]:
                enc.set_default_att_context_size(lat["att_context_size"])
                enc.setup_streaming_params()
                ch, tm, ln = enc.get_initial_cache_state(batch_size=2)
                caches = [ch.transpose(0, 1).contiguous(), tm.transpose(0, 1).contiguous(), ln.to(torch.int64)]
                ort_caches = [c.numpy() for c in caches]
                for step in range(3):
                    first = step == 0
                    T = lat["chunk_size"][0] + lat["pre_encode_cache_size"][0] if first else \
                        lat["shift_size"][1] + lat["pre_encode_cache_size"][1]
                    x = torch.randn(2, n_mels, T, generator=g)
                    length = torch.tensor([T, T], dtype=torch.int64)
                    drop = enc.streaming_cfg.drop_extra_pre_encoded
                    enc.streaming_cfg.drop_extra_pre_encoded = 0 if first else drop
                    try:
                        ref = graph(x, length, *caches, ids, *bank.values())
                    finally:
                        enc.streaming_cfg.drop_extra_pre_encoded = drop
                    name = lat["graphs"]["first" if first else "steady"]
                    if name not in sessions:
                        sessions[name] = make_session(out / name, weights=weights)
                    sess = sessions[name]
                    feeds = dict(zip(
                        ENCODER_INPUTS,
                        [x.numpy(), length.numpy(), *ort_caches, ids.numpy(), *(v.numpy() for v in bank.values())],
                    ))
                    got = sess.run(None, feeds)
                    n = int(ref[1].min())
                    worst = max(worst, float(np.abs(got[0][:, :n] - ref[0][:, :n].numpy()).max()))
                    if name not in steps:
                        steps[name] = loader.load(out / step_file(name))
                    twin = steps[name](x, length, *(torch.from_numpy(c) for c in ort_caches), ids, *bank.values())
                    worst_step = max(worst_step, float((twin[0][:, :n] - ref[0][:, :n]).abs().max()))
                    caches = list(ref[2:])
                    ort_caches = got[2:]
    finally:
        hooks.remove()
        enc.set_default_att_context_size(default)
        enc.setup_streaming_params()
    if worst > tol:
        raise VerificationError(f"ONNX encoder output differs from PyTorch by {worst:.2e} (> {tol})")
    if worst_step > tol:
        raise VerificationError(f"the TorchScript step's output differs from PyTorch by {worst_step:.2e} (> {tol})")
    return {"encoder_max_abs_diff": worst, "torch_step_max_abs_diff": worst_step}
