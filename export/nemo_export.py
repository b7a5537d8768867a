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

import contextlib
import hashlib
import logging
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from brogue.audio.mel import MelConfig, log_mel, mel_filterbank
from brogue.engine.metadata import FORMAT as MODEL_FORMAT
from brogue.engine.metadata import bank_input_names

from .bank import BANK_INPUTS, BankHooks, identity_bank

log = logging.getLogger(__name__)

OPSET = 17


class ExportError(RuntimeError):
    """The model cannot be exported for streaming; the message says why."""


# ---------------------------------------------------------------------------------------------
# Loading and inspecting the NeMo model


def load_nemo(path: str | Path):
    """Restore a ``.nemo`` file on CPU, in eval mode."""
    from nemo.core.classes import ModelPT

    path = Path(path)
    if not path.is_file():
        raise ExportError(f"{path}: no such .nemo file")
    model = ModelPT.restore_from(str(path), map_location=torch.device("cpu"))
    return model.eval()


def model_head(model) -> str:
    """The model's own head: "ctc", "rnnt" or "hybrid"."""
    from nemo.collections.asr.models import EncDecCTCModel, EncDecHybridRNNTCTCModel, EncDecRNNTModel

    if isinstance(model, EncDecHybridRNNTCTCModel):
        return "hybrid"
    if isinstance(model, EncDecRNNTModel):
        return "rnnt"
    if isinstance(model, EncDecCTCModel):
        return "ctc"
    raise ExportError(f"{type(model).__name__} is not a CTC, RNNT or hybrid ASR model")


def base_state(model) -> dict[str, torch.Tensor]:
    """The base weights: the model's state dict without any adapter parameters."""
    return {k: v for k, v in model.state_dict().items() if ".adapter_layer." not in k}


def fingerprint(model) -> str:
    """A content hash of the base weights (names, dtypes, shapes and values), adapters excluded."""
    h = hashlib.sha256()
    for k, v in sorted(base_state(model).items()):
        t = v.detach().cpu().contiguous()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return "sha256:" + h.hexdigest()


def _pair(v) -> list[int]:
    return [int(x) for x in v] if isinstance(v, (list, tuple)) else [int(v), int(v)]


def mel_config(model) -> MelConfig:
    """The featurizer settings of ``model.preprocessor``; refuses what the numpy front end lacks."""
    fz = getattr(model.preprocessor, "featurizer", None)
    if fz is None:
        raise ExportError(f"unsupported preprocessor {type(model.preprocessor).__name__}")
    pcfg = model.cfg.get("preprocessor", {})
    problems = []
    if getattr(fz, "normalize", None) not in (None, "NA", ""):
        problems.append(f"normalize={fz.normalize!r} (streaming needs 'NA')")
    if getattr(fz, "frame_splicing", 1) != 1:
        problems.append(f"frame_splicing={fz.frame_splicing}")
    if not getattr(fz, "log", True):
        problems.append("log=False")
    if getattr(fz, "exact_pad", False):
        problems.append("exact_pad=True")
    if getattr(fz, "log_zero_guard_type", "add") != "add":
        problems.append(f"log_zero_guard_type={fz.log_zero_guard_type!r}")
    if pcfg.get("window", "hann") != "hann":
        problems.append(f"window={pcfg.get('window')!r}")
    if problems:
        raise ExportError("preprocessor settings not supported for streaming: " + ", ".join(problems))
    guard = fz.log_zero_guard_value
    if isinstance(guard, str):  # "tiny" / "eps", resolved in float32 as NeMo does
        guard = {"tiny": float(np.finfo(np.float32).tiny), "eps": float(np.finfo(np.float32).eps)}[guard]
    mel = MelConfig(
        sample_rate=int(fz.sample_rate),
        n_fft=int(fz.n_fft),
        win_length=int(fz.win_length),
        hop_length=int(fz.hop_length),
        n_mels=int(fz.nfilt),
        preemph=float(fz.preemph or 0.0),
        lowfreq=float(pcfg.get("lowfreq", 0) or 0),
        highfreq=float(pcfg.get("highfreq") or fz.sample_rate / 2),
        mag_power=float(fz.mag_power),
        log_guard=float(guard),
    )
    fb_err = float(np.abs(fz.fb[0].numpy() - mel_filterbank(mel)).max())
    if fb_err > 1e-6:
        raise ExportError(f"mel filterbank is not Slaney's (max diff {fb_err:.1e}): mel_norm/htk unsupported")
    return mel


def check_front_end(model, mel: MelConfig, seconds: float = 2.0, tol: float = 1e-3) -> float:
    """Max |numpy log-mel - NeMo log-mel| on noise; raises :class:`ExportError` above ``tol``."""
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(int(seconds * mel.sample_rate)) * 0.1).astype(np.float32)
    with torch.no_grad():
        ref, ref_len = model.preprocessor(input_signal=torch.from_numpy(x)[None], length=torch.tensor([len(x)]))
    ref = ref[0, :, : int(ref_len[0])].numpy()
    ours = log_mel(x, mel)
    if ours.shape != ref.shape:
        raise ExportError(f"front end frame count differs from NeMo: {ours.shape} vs {ref.shape}")
    err = float(np.abs(ours - ref).max())
    if err > tol:
        raise ExportError(f"numpy front end differs from NeMo's preprocessor by {err:.2e} (> {tol})")
    return err


def vocabulary(model, head: str) -> dict:
    """Token strings, blank id and tokenizer kind of the served head."""
    tok = getattr(model, "tokenizer", None)
    if tok is not None:
        sp = getattr(tok, "tokenizer", None)
        if sp is None or not hasattr(sp, "id_to_piece"):
            raise ExportError(f"unsupported tokenizer {type(tok).__name__} (SentencePiece only)")
        tokens = [sp.id_to_piece(i) for i in range(tok.vocab_size)]
        kind = "sentencepiece"
    else:
        if head == "rnnt":
            labels = model.joint.vocabulary
        else:
            labels = (model.ctc_decoder if model_head(model) == "hybrid" else model.decoder).vocabulary
        tokens = list(labels)
        kind = "char"
    return {"kind": kind, "tokens": tokens, "blank_id": len(tokens)}


# ---------------------------------------------------------------------------------------------
# Graph wrappers


class EncoderGraph(nn.Module):
    """Encoder streaming step with the adapter bank, and the CTC head when it serves CTC.

    Inputs and outputs are batch-first (NeMo's encoder keeps caches layer-first internally).
    """

    def __init__(self, model, head: str, hooks: BankHooks):
        super().__init__()
        self.encoder = model.encoder
        self.ctc = None
        if head == "ctc":
            self.ctc = model.ctc_decoder if model_head(model) == "hybrid" else model.decoder
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
def _exporting(model):
    from nemo.core.classes.common import typecheck
    from nemo.utils.export_utils import replace_for_export

    replace_for_export(model)
    typecheck.set_typecheck_enabled(enabled=False)
    try:
        with torch.no_grad():
            yield
    finally:
        typecheck.set_typecheck_enabled(enabled=True)


def _onnx_export(module, args, path: Path, input_names, output_names, dynamic_axes):
    import warnings

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


# ---------------------------------------------------------------------------------------------
# Streaming settings


def latency_settings(encoder, mel: MelConfig) -> dict:
    """The streaming settings NeMo derives for the encoder's current attention context."""
    encoder.setup_streaming_params()
    s = encoder.streaming_cfg
    ctx = [int(x) for x in encoder.att_context_size]
    chunk, shift, pre = _pair(s.chunk_size), _pair(s.shift_size), _pair(s.pre_encode_cache_size)
    sampling = encoder.pre_encode.get_sampling_frames() if hasattr(encoder.pre_encode, "get_sampling_frames") else 1
    return {
        "name": f"{ctx[0]}_{ctx[1]}",
        "att_context_size": ctx,
        "chunk_size": chunk,
        "shift_size": shift,
        "pre_encode_cache_size": pre,
        "drop_extra_pre_encoded": int(s.drop_extra_pre_encoded),
        "valid_out_len": int(s.valid_out_len),
        "last_channel_cache_size": int(s.last_channel_cache_size),
        "sampling_frames": _pair(sampling),
        "chunk_ms": shift[1] * mel.hop_length * 1000 // mel.sample_rate,
    }


@contextlib.contextmanager
def _positions_for_streaming(encoder, latencies: list[dict]):
    """Trim the relative-position table to what one streaming step can index.

    NeMo sizes it for ``pos_emb_max_len`` (5000 frames: a 2 x 5000 x d constant, 7 MB at d=176, in
    every graph). A streaming step sees at most the attention cache plus one chunk's frames.
    """
    pos = encoder.pos_enc
    if type(pos).__name__ not in ("RelPositionalEncoding", "PositionalEncoding"):
        yield
        return
    factor = int(encoder.subsampling_factor)
    longest = max(max(l["chunk_size"][0] + l["pre_encode_cache_size"][0], l["shift_size"][1] +
                      l["pre_encode_cache_size"][1]) for l in latencies)
    n = max(l["last_channel_cache_size"] for l in latencies) + longest // factor + 2
    original = pos.pe
    if type(pos).__name__ == "RelPositionalEncoding":
        positions = torch.arange(n - 1, -n, -1, dtype=torch.float32).unsqueeze(1)
    else:
        positions = torch.arange(0, n, dtype=torch.float32).unsqueeze(1)
    if positions.size(0) >= original.size(1):
        yield
        return
    pos.create_pe(positions=positions, dtype=original.dtype)
    try:
        yield
    finally:
        pos.pe = original


def _cache_shapes(encoder) -> tuple[list[int], list[int]]:
    ch, tm, _ = encoder.get_initial_cache_state(batch_size=1)
    # NeMo returns [L, B, ...]; the graphs are batch-first, shapes given without the batch axis.
    return [int(x) for x in (ch.shape[0], *ch.shape[2:])], [int(x) for x in (tm.shape[0], *tm.shape[2:])]


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
    out.mkdir(parents=True, exist_ok=True)
    mel = mel_config(model)
    mel_err = check_front_end(model, mel)
    vocab = vocabulary(model, head)
    n_layers, d_model = len(enc.layers), int(enc.d_model)
    ch_shape, tm_shape = _cache_shapes(enc)
    files: list[str] = []

    hooks = BankHooks(enc)
    graph = EncoderGraph(model, head, hooks).eval()
    default_ctx = [int(x) for x in enc.att_context_size]
    latencies = []
    checks = {"front_end_max_abs_diff": mel_err}
    contexts = [list(map(int, c)) for c in enc.att_context_size_all]
    for ctx in contexts:
        enc.set_default_att_context_size(ctx)
        latencies.append(latency_settings(enc, mel))
    try:
        with _exporting(model), _positions_for_streaming(enc, latencies):
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
                        args = _example_inputs(enc, frames, n_layers, d_model, max_adapter_dim, mel.n_mels)
                        _onnx_export(graph, args, out / fname, *_encoder_io(head))
                    finally:
                        enc.streaming_cfg.drop_extra_pre_encoded = drop
                    lat["graphs"][variant] = fname
                    files.append(fname)
                if "first" not in lat["graphs"]:
                    lat["graphs"]["first"] = lat["graphs"]["steady"]
            enc.set_default_att_context_size(default_ctx)
            enc.setup_streaming_params()

            rnnt = None
            if head == "rnnt":
                rnnt = _export_rnnt(model, out)
                files += [rnnt["decoder"], rnnt["joint"]]
    finally:
        hooks.remove()

    tokenizer_file = None
    if vocab["kind"] == "sentencepiece":  # the model proto itself, wherever NeMo loaded it from
        (out / "tokenizer.model").write_bytes(model.tokenizer.tokenizer.serialized_model_proto())
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
        "latencies": latencies,
        "default_latency": f"{default_ctx[0]}_{default_ctx[1]}",
        "adapters": {"max_dim": int(max_adapter_dim), "n_layers": n_layers, "d_model": d_model,
                     "inputs": bank_input_names()},
        "vocabulary": {**vocab, "tokenizer_file": tokenizer_file},
        "decoding": {"strategy": "greedy", **({"rnnt": rnnt} if rnnt else {})},
        "fingerprint": fingerprint(model),
        "opset": OPSET,
        "checks": checks,
        "files": sorted(files),
    }
    if verify:
        from .verify import verify_encoder

        meta["checks"]["encoder_max_abs_diff"] = verify_encoder(model, head, meta, out)
    meta["export_seconds"] = round(time.perf_counter() - t0, 2)
    write_metadata(out / "model.json", meta)
    return meta


def _encoder_io(head: str):
    inputs = ["audio_signal", "length", "cache_last_channel", "cache_last_time", "cache_last_channel_len",
              *BANK_INPUTS]
    first_out = "logprobs" if head == "ctc" else "encoded"
    outputs = [first_out, "encoded_lengths", "cache_last_channel_next", "cache_last_time_next",
               "cache_last_channel_next_len"]
    dyn = {
        "audio_signal": {0: "B", 2: "T"},
        "length": {0: "B"},
        "cache_last_channel": {0: "B"},
        "cache_last_time": {0: "B"},
        "cache_last_channel_len": {0: "B"},
        "adapter_ids": {0: "B"},
        "adapter_ln_weight": {0: "S"},
        "adapter_ln_bias": {0: "S"},
        "adapter_down": {0: "S"},
        "adapter_up": {0: "S"},
        first_out: {0: "B", 1: "T_out"},
        "encoded_lengths": {0: "B"},
        "cache_last_channel_next": {0: "B"},
        "cache_last_time_next": {0: "B"},
        "cache_last_channel_next_len": {0: "B"},
    }
    return inputs, outputs, dyn


def _example_inputs(enc, frames: int, n_layers: int, d_model: int, max_dim: int, n_mels: int):
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


def _export_rnnt(model, out: Path) -> dict:
    dec, joint = model.decoder, model.joint
    rnn = dec.prediction["dec_rnn"]
    layers = int(getattr(dec, "pred_rnn_layers", None) or rnn.lstm.num_layers)
    hidden = int(dec.pred_hidden)
    B = 2
    h = torch.zeros(layers, B, hidden)
    c = torch.zeros(layers, B, hidden)
    targets = torch.tensor([dec.blank_idx, 0], dtype=torch.int64)
    _onnx_export(
        RNNTDecoderStep(dec).eval(), (targets, h, c), out / "rnnt_decoder.onnx",
        ["targets", "h", "c"], ["decoder_output", "h_next", "c_next"],
        {"targets": {0: "B"}, "h": {1: "B"}, "c": {1: "B"}, "decoder_output": {0: "B"},
         "h_next": {1: "B"}, "c_next": {1: "B"}},
    )
    enc_dim = int(joint.encoder_hidden) if hasattr(joint, "encoder_hidden") else int(model.encoder._feat_out)
    f = torch.randn(B, enc_dim)
    g = torch.randn(B, hidden)
    _onnx_export(
        RNNTJointStep(joint).eval(), (f, g), out / "rnnt_joint.onnx",
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
