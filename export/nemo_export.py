"""Export a NeMo cache-aware streaming model to ONNX graphs plus ``model.json``.

``export_model`` takes any NeMo cache-aware FastConformer (CTC, RNNT, or hybrid RNNT/CTC, with a
character vocabulary or a SentencePiece tokenizer) and writes into ``out_dir``:

- ``encoder.<L>_<R>.onnx`` per supported latency (attention context ``[L, R]``): the encoder with
  cache inputs/outputs and the adapter bank (see :mod:`brogue.export.bank`); for CTC the CTC head is
  fused in and the graph returns log-probabilities, for RNNT it returns the encoder output;
- ``encoder_first.<L>_<R>.onnx``: the first-chunk variant (no pre-encode cache, nothing dropped),
  so that streaming output equals offline output;
- ``rnnt_decoder.onnx`` and ``rnnt_joint.onnx`` for an RNNT head (one prediction-network step and
  one joint step, for batched greedy decoding);
- ``tokenizer.model`` for SentencePiece models (the token pieces are also in ``model.json``);
- ``model.json``: everything the server needs to stream without NeMo (:mod:`brogue.engine.metadata`).

The graphs are traced with the TorchScript exporter (opset 17), which NeMo itself uses for these
models. Export then checks its own output: the numpy mel front end against NeMo's preprocessor,
and each encoder graph against NeMo's PyTorch streaming step on a mixed adapter bank.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch

from brogue.audio.mel import MelConfig
from brogue.engine.metadata import FORMAT as MODEL_FORMAT
from brogue.engine.metadata import bank_input_names
from brogue.engine.torch_backend import step_file

from .bank import BankHooks
from .nemo_model import (ExportError, _cache_shapes, _positions_for_streaming, base_state, check_front_end, fingerprint,
                         latency_settings, load_nemo, mel_config, model_head, vocabulary)
from .graphs import (OPSET, EncoderGraph, RNNTDecoderStep, RNNTJointStep, ctc_head, encoder_io, example_inputs,
                     exporting, onnx_export, torch_export)
from .weights import WeightsWriter

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# The export


def export_model(
    model_or_path,
    out_dir: str | Path,
    *,
    head: str | None = None,
    max_adapter_dim: int = 64,
    name: str | None = None,
    verify: bool = True,
) -> dict:
    """Export ``model_or_path`` (a NeMo model or ``.nemo`` path) into ``out_dir``; return the metadata.

    ``head``: for a hybrid model, "ctc" or "rnnt" (default: the model's current decoder); for others
    it must match the model or be None. ``max_adapter_dim``: the bank's adapter dim r (adapters with
    a smaller dim are zero-padded; larger ones are refused when loaded). A live model is changed in
    place: eval mode, its NeMo adapters disabled, export-friendly module replacements.
    """
    from brogue.engine.metadata import write_metadata

    t0 = time.perf_counter()
    source = None
    if isinstance(model_or_path, (str, Path)):
        source = str(model_or_path)
        model = load_nemo(model_or_path)
    else:
        model = model_or_path.eval()
    kind = model_head(model)
    if head is None:
        head = getattr(model, "cur_decoder", "rnnt") if kind == "hybrid" else kind
    if head not in ("ctc", "rnnt") or (kind != "hybrid" and head != kind):
        raise ExportError(f"cannot serve head {head!r} of a {kind} model")

    enc = model.encoder
    if not hasattr(enc, "setup_streaming_params") or getattr(enc, "att_context_style", None) is None:
        raise ExportError(f"{type(enc).__name__} is not a cache-aware streaming encoder")
    if enc.att_context_style not in ("chunked_limited", "regular"):
        raise ExportError(f"att_context_style {enc.att_context_style!r} is not supported for streaming")
    offline = [list(map(int, c)) for c in enc.att_context_size_all if min(int(x) for x in c) < 0]
    if offline:
        raise ExportError(f"attention context {offline[0]} is unlimited: this is an offline model, not a "
                          "cache-aware streaming one (train it with a limited att_context_size)")
    if getattr(getattr(enc, "pre_encode", None), "is_causal", True) is False or \
            not getattr(enc, "causal_downsampling", True):
        raise ExportError("the encoder's subsampling is not causal: not a cache-aware streaming model")
    if not hasattr(enc, "layers") or not all(hasattr(l, "norm_out") for l in enc.layers):
        raise ExportError("encoder layers are not Conformer layers (no norm_out)")
    if head == "rnnt":
        if getattr(model.joint, "num_extra_outputs", 0):
            raise ExportError("TDT/multi-output joints are not supported")
        if not hasattr(model.decoder, "prediction") or "dec_rnn" not in model.decoder.prediction:
            raise ExportError(f"RNNT decoder {type(model.decoder).__name__} has no LSTM prediction network")
    if max_adapter_dim < 1:
        raise ExportError("max_adapter_dim must be >= 1")

    # Serve the base model: every NeMo adapter off (adapters live in the bank).
    if hasattr(model, "get_enabled_adapters") and model.get_enabled_adapters():
        model.set_enabled_adapters(enabled=False)

    out = Path(out_dir)
    mel = mel_config(model)
    mel_err = check_front_end(model, mel)
    vocab = vocabulary(model, head)
    n_layers, d_model = len(enc.layers), int(enc.d_model)
    ch_shape, tm_shape = _cache_shapes(enc)
    fp = fingerprint(model)
    stage = _staging_folder(out, base_state(model))
    try:
        files, meta_parts = _write_graphs(model, head, stage, mel, max_adapter_dim)
        tokenizer_file = None
        if vocab["kind"] == "sentencepiece":  # the model proto itself, wherever NeMo loaded it from
            (stage / "tokenizer.model").write_bytes(model.tokenizer.tokenizer.serialized_model_proto())
            tokenizer_file = "tokenizer.model"
            files.append(tokenizer_file)
        meta = {
            "format": MODEL_FORMAT,
            "name": name or out.name,
            "source": {"nemo_class": type(model).__name__, "path": source, "model_head": kind},
            "head": head,
            "sample_rate": mel.sample_rate,
            "features": mel.to_dict(),
            "encoder": {
                "n_layers": n_layers,
                "d_model": d_model,
                "subsampling_factor": int(enc.subsampling_factor),
                "att_context_style": enc.att_context_style,
                "cache_last_channel": ch_shape,
                "cache_last_time": tm_shape,
                "output_dim": len(vocab["tokens"]) + 1 if head == "ctc" else int(getattr(enc, "_feat_out", d_model)),
            },
            "latencies": meta_parts["latencies"],
            "default_latency": meta_parts["default_latency"],
            "adapters": {"max_dim": int(max_adapter_dim), "n_layers": n_layers, "d_model": d_model,
                         "inputs": bank_input_names()},
            "vocabulary": {**vocab, "tokenizer_file": tokenizer_file},
            "decoding": {"strategy": "greedy", **({"rnnt": meta_parts["rnnt"]} if meta_parts["rnnt"] else {})},
            "fingerprint": fp,
            "weights": meta_parts["weights"],
            "opset": OPSET,
            "checks": {"front_end_max_abs_diff": mel_err},
            "files": sorted(files),
        }
        old = _previous_export(out)
        _keep_lm(old, meta)
        if verify:
            from .verify import verify_encoder

            meta["checks"].update(verify_encoder(model, head, meta, stage))
        meta["export_seconds"] = round(time.perf_counter() - t0, 2)
        write_metadata(stage / "model.json", meta)
        _publish(stage, out, meta["files"] + ["model.json"], old)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return meta


def _write_graphs(model, head: str, folder: Path, mel: MelConfig, max_adapter_dim: int) -> tuple[list[str], dict]:
    """Trace every latency's first-chunk and steady encoder graphs (and the RNNT decoder and joint)
    into ``folder``, all sharing one weights file. Returns the file names and the metadata parts."""
    enc = model.encoder
    n_layers, d_model = len(enc.layers), int(enc.d_model)
    hooks = BankHooks(enc)
    graph = EncoderGraph(enc, ctc_head(model, head), hooks).eval()
    default_ctx = [int(x) for x in enc.att_context_size]
    contexts = [list(map(int, c)) for c in enc.att_context_size_all]
    latencies = []
    for ctx in contexts:
        enc.set_default_att_context_size(ctx)
        latencies.append(latency_settings(enc, mel))
    weights = WeightsWriter(folder)
    files: list[str] = []
    rnnt = None
    try:
        with exporting(model), _positions_for_streaming(enc, latencies):
            for ctx, lat in zip(contexts, latencies):
                enc.set_default_att_context_size(ctx)
                enc.setup_streaming_params()
                lat["graphs"] = {}
                for variant in ("first", "steady"):
                    same = lat["drop_extra_pre_encoded"] == 0 and \
                        lat["pre_encode_cache_size"][0] == lat["pre_encode_cache_size"][1]
                    if variant == "first" and same:  # the steady graph serves the first chunk too
                        continue
                    fname = f"encoder{'_first' if variant == 'first' else ''}.{lat['name']}.onnx"
                    drop = lat["drop_extra_pre_encoded"]
                    enc.streaming_cfg.drop_extra_pre_encoded = 0 if variant == "first" else drop
                    try:
                        frames = (lat["chunk_size"][0] + lat["pre_encode_cache_size"][0]) if variant == "first" \
                            else (lat["shift_size"][1] + lat["pre_encode_cache_size"][1])
                        args = example_inputs(enc, frames, n_layers, d_model, max_adapter_dim, mel.n_mels)
                        onnx_export(graph, args, weights, fname, *encoder_io(head))
                        torch_export(graph, args, weights, step_file(fname))
                    finally:
                        enc.streaming_cfg.drop_extra_pre_encoded = drop
                    log.info("exported %s", fname)
                    lat["graphs"][variant] = fname
                    files += [fname, step_file(fname)]
                if "first" not in lat["graphs"]:
                    lat["graphs"]["first"] = lat["graphs"]["steady"]
            enc.set_default_att_context_size(default_ctx)
            enc.setup_streaming_params()
            if head == "rnnt":
                rnnt = _export_rnnt(model, weights)
                files += [rnnt["decoder"], rnnt["joint"], step_file(rnnt["decoder"]), step_file(rnnt["joint"])]
        summary = weights.finish()
    finally:
        weights.abort()
        hooks.remove()
    files += [summary["file"], summary["index"]]
    return files, {"latencies": latencies, "default_latency": f"{default_ctx[0]}_{default_ctx[1]}", "rnnt": rnnt,
                   "weights": summary}


def _staging_folder(out: Path, weights: dict[str, torch.Tensor]) -> Path:
    """A fresh folder beside ``out`` to export into, after checking that the disk can hold the export:
    the weights file plus one graph's scratch copy of the weights, and a margin."""
    parent = out.resolve().parent
    parent.mkdir(parents=True, exist_ok=True)
    weight_bytes = sum(t.numel() * t.element_size() for t in weights.values())
    need = 2 * weight_bytes + (64 << 20)
    free = shutil.disk_usage(parent).free
    if free < need:
        raise ExportError(f"not enough disk space in {parent}: the export needs about {need / 1e9:.2f} GB "
                          f"({weight_bytes / 1e9:.2f} GB of weights, written once, plus one graph's scratch copy), "
                          f"{free / 1e9:.2f} GB are free; nothing was written")
    return Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=parent))


def _previous_export(out: Path):
    """The export already in ``out`` (its ``ModelMeta``), or None."""
    from brogue.engine.metadata import ModelMeta

    try:
        return ModelMeta.load(out)
    except (FileNotFoundError, ValueError):
        return None


def _keep_lm(old, meta: dict) -> None:
    """A re-export over an ``old`` export whose model has a CTC language model (``brogue lm``) keeps
    it, when the new export decodes CTC over the same vocabulary: the LM is a property of the vocabulary."""
    lm = None if old is None else old.ctc_lm
    if lm is None or meta["head"] != "ctc" or old.tokens != meta["vocabulary"]["tokens"]:
        return
    meta["decoding"]["ctc_lm"] = lm
    meta["files"] = sorted({*meta["files"], lm["file"]})


def _publish(stage: Path, out: Path, files: list[str], old) -> None:
    """Move the finished export's ``files`` from ``stage`` into ``out``; files of the ``old`` export
    there that the new one no longer has are removed, anything else in ``out`` is kept."""
    out.mkdir(parents=True, exist_ok=True)
    for f in files:
        if (stage / f).exists():  # the rest (a kept LM) is in ``out`` already
            os.replace(stage / f, out / f)
    for f in set(old.raw.get("files", []) if old is not None else ()) - set(files):
        (out / f).unlink(missing_ok=True)


def _export_rnnt(model, weights: WeightsWriter) -> dict:
    dec, joint = model.decoder, model.joint
    rnn = dec.prediction["dec_rnn"]
    layers = int(getattr(dec, "pred_rnn_layers", None) or rnn.lstm.num_layers)
    hidden = int(dec.pred_hidden)
    B = 2
    h = torch.zeros(layers, B, hidden)
    c = torch.zeros(layers, B, hidden)
    targets = torch.tensor([dec.blank_idx, 0], dtype=torch.int64)
    decoder_step = RNNTDecoderStep(dec).eval()
    torch_export(decoder_step, (targets, h, c), weights, step_file("rnnt_decoder.onnx"))
    onnx_export(
        decoder_step, (targets, h, c), weights, "rnnt_decoder.onnx",
        ["targets", "h", "c"], ["decoder_output", "h_next", "c_next"],
        {"targets": {0: "B"}, "h": {1: "B"}, "c": {1: "B"}, "decoder_output": {0: "B"},
         "h_next": {1: "B"}, "c_next": {1: "B"}},
    )
    enc_dim = int(joint.encoder_hidden) if hasattr(joint, "encoder_hidden") else int(model.encoder._feat_out)
    f = torch.randn(B, enc_dim)
    g = torch.randn(B, hidden)
    joint_step = RNNTJointStep(joint).eval()
    torch_export(joint_step, (f, g), weights, step_file("rnnt_joint.onnx"))
    onnx_export(
        joint_step, (f, g), weights, "rnnt_joint.onnx",
        ["encoder_frame", "decoder_output"], ["logprobs"],
        {"encoder_frame": {0: "B"}, "decoder_output": {0: "B"}, "logprobs": {0: "B"}},
    )
    greedy = model.cfg.decoding.get("greedy", {}) if "decoding" in model.cfg else {}
    return {
        "decoder": "rnnt_decoder.onnx",
        "joint": "rnnt_joint.onnx",
        "pred_hidden": hidden,
        "pred_rnn_layers": layers,
        "max_symbols": int(greedy.get("max_symbols", None) or 10),
    }
