"""What the exporter reads from a NeMo cache-aware model: its head, fingerprint, mel front end (and a
check of Brogue's numpy front end against it), vocabulary, latencies and cache shapes; and the error
a model that cannot be streamed raises."""

from __future__ import annotations

import contextlib
import hashlib
from pathlib import Path

import numpy as np
import torch

from brogue.audio.mel import MelConfig, log_mel, mel_filterbank


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
    try:
        model = ModelPT.restore_from(str(path), map_location=torch.device("cpu"))
    except Exception as e:  # NeMo raises anything from a tarfile error to a Hydra instantiation error
        raise ExportError(f"{path}: not a NeMo model that can be restored ({type(e).__name__}: {e})") from None
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
