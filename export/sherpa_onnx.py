"""Export a NeMo cache-aware streaming CTC model for sherpa-onnx's streaming NeMo CTC recognizer.

``export_for_sherpa(nemo_path, out_dir, latency=None)`` writes two files into ``out_dir``:

- ``model.onnx``: NeMo's own cache-aware export (``set_export_config({"cache_support": True})``,
  then ``model.export``) of the encoder and the CTC head, for one latency. Its inputs, which
  sherpa-onnx feeds by position, are ``audio_signal [B, n_mels, T]``, ``length [B]``,
  ``cache_last_channel [B, layers, cache, d_model]``, ``cache_last_time [B, layers, d_model, conv]``
  and ``cache_last_channel_len [B]``; its outputs are ``logprobs [B, T', vocab + 1]`` (log-softmax,
  blank last), the output lengths (which sherpa ignores) and the three next caches, in that order.
- ``tokens.txt``: one ``symbol id`` per line, the CTC blank last as ``<blk>``. sherpa parses each
  line as two whitespace-separated fields, so the space of a character vocabulary is written as
  ``▁`` (U+2581), which sherpa turns back into a space.

The ONNX metadata props that sherpa-onnx reads, and why each value is what it is:

- ``window_size``: mel frames per encoder call, ``shift_size[1] + pre_encode_cache_size[1]`` of
  the latency, i.e. the steady chunk with its pre-encode context (24 + 5 = 29 for the demo model at
  ``72_5``). sherpa slides this window over the stream's frames from frame 0.
- ``chunk_shift``: how far the window moves per call, ``shift_size[1]``: the mel frames of new audio
  per chunk, the same as Brogue's steady chunk (24 frames x 10 ms = 240 ms at ``72_5``).
- ``vocab_size``: tokens without the blank (sherpa adds one for the blank).
- ``cache_last_channel_dim1..3``: layers, attention cache frames (``last_channel_cache_size``),
  d_model; ``cache_last_time_dim1..3``: layers, d_model, depthwise-conv cache frames. sherpa
  allocates zero caches of these shapes (batch 1) for each new stream and concatenates them over
  the batch axis.
- ``subsampling_factor``: the encoder's; ``normalize_type``: the preprocessor's normalisation, ""
  for ``NA`` (a cache-aware model must not normalise per utterance); ``model_type``: the NeMo class
  name; ``version``: "1". sherpa-onnx 2.0.1 refuses to load a model that lacks ``window_size``,
  ``chunk_shift``, ``vocab_size``, ``subsampling_factor`` or a cache dim; it loads one without
  ``normalize_type``, ``model_type`` or ``version`` (its NeMo CTC reader does not read them), which
  are written as sherpa-onnx's own NeMo export scripts write them. ``brogue_latency`` (the latency
  name), ``model_author`` and ``comment`` are for people and for :mod:`bench.sherpa`.

What the same latency means in each engine: Brogue cuts the first chunk with NeMo's first-chunk
settings (``chunk_size[0]`` frames, no pre-encode context, nothing dropped; its own graph) and every
later one as ``pre_encode_cache_size[1]`` context frames plus ``shift_size[1]`` new frames.
sherpa-onnx runs the steady graph from frame 0: its first window takes the first
``pre_encode_cache_size[1]`` frames (0..4) as pre-encode context, where NeMo's first chunk has
none, and its chunk boundaries lag Brogue's by ``window_size - chunk_size[0]`` frames (29 - 21 = 8,
80 ms, at ``72_5``). It runs a window only once one more frame exists, so with 240 ms packets its
first window runs after the second packet and every later one a packet after Brogue's chunk (the
same number of encoder runs per packet in the steady state). sherpa also computes its own Kaldi-style
fbank features (:data:`FEATURES` lists the differences), not NeMo's log-mel; the model
is not retrained for them.

Run as ``python -m brogue.export.sherpa_onnx MODEL.nemo OUT_DIR [--latency 72_5] [--check MANIFEST]``
to export and print the WER of sherpa-onnx on a manifest's clips.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from .nemo_model import ExportError, latency_settings, load_nemo, mel_config, model_head, vocabulary

SPACE = "\u2581"  # sherpa-onnx's SymbolTable reads a leading U+2581 as a space
BLANK = "<blk>"  # one of the blank symbols sherpa-onnx's CTC decoder looks for
ONNX_INPUTS = ["audio_signal", "length", "cache_last_channel", "cache_last_time", "cache_last_channel_len"]
ONNX_OUTPUTS = ["logprobs", "encoded_lengths", "cache_last_channel_next", "cache_last_time_next",
                "cache_last_channel_next_len"]
FEATURES = ("sherpa-onnx 2.0.1 computes Kaldi-style log fbank (its FeatureExtractorConfig: 80 bins, "
            "low_freq 20, high_freq -400 i.e. 7600 Hz, dither 0, snip_edges False) where NeMo computes "
            "log-mel (hann window, Slaney mel 0-8000 Hz, preemph 0.97, log(x + 2^-24))")


def select_latency(model, latency: str | None) -> list[int]:
    """Set the encoder to ``latency`` ("L_R", as Brogue names it; None: the model's default
    attention context) exactly as Brogue's export does, and return the context ``[L, R]``."""
    enc = model.encoder
    contexts = [[int(x) for x in c] for c in enc.att_context_size_all]
    if latency is None:
        ctx = [int(x) for x in enc.att_context_size]
    else:
        ctx = next((c for c in contexts if f"{c[0]}_{c[1]}" == latency), None)
        if ctx is None:
            raise ExportError(f"latency {latency!r} not in the model; it has "
                              + ", ".join(f"{c[0]}_{c[1]}" for c in contexts))
    enc.set_default_att_context_size(ctx)
    enc.setup_streaming_params()
    return ctx


def sherpa_metadata(model, lat: dict, n_tokens: int) -> dict[str, str]:
    """The metadata props (all strings) for ``model`` at latency settings ``lat``."""
    enc = model.encoder
    ch, tm, _ = enc.get_initial_cache_state(batch_size=1)  # [layers, batch, ...]
    normalize = str(model.cfg.preprocessor.get("normalize", "NA") or "NA")
    meta = {
        "vocab_size": n_tokens,
        "window_size": lat["shift_size"][1] + lat["pre_encode_cache_size"][1],
        "chunk_shift": lat["shift_size"][1],
        "normalize_type": "" if normalize == "NA" else normalize,
        "cache_last_channel_dim1": ch.shape[0],
        "cache_last_channel_dim2": ch.shape[2],
        "cache_last_channel_dim3": ch.shape[3],
        "cache_last_time_dim1": tm.shape[0],
        "cache_last_time_dim2": tm.shape[2],
        "cache_last_time_dim3": tm.shape[3],
        "subsampling_factor": int(enc.subsampling_factor),
        "model_type": type(model).__name__,
        "version": "1",
        "model_author": "NeMo",
        "brogue_latency": lat["name"],
        "comment": f"Brogue latency {lat['name']}: {lat['chunk_ms']} ms of new audio per chunk; "
                   "CTC head only",
    }
    return {k: str(v) for k, v in meta.items()}


def write_tokens(path: Path, tokens: list[str]) -> None:
    """``tokens.txt``: ``symbol id`` per line, spaces as U+2581, ``<blk>`` last."""
    lines = []
    for i, t in enumerate(tokens):
        sym = SPACE + t[1:] if t.startswith(" ") else t
        if not sym or any(c.isspace() for c in sym):
            raise ExportError(f"token {i} ({t!r}) cannot be written to tokens.txt")
        lines.append(f"{sym} {i}")
    lines.append(f"{BLANK} {len(tokens)}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def check_graph(onnx_model, meta: dict[str, str]) -> None:
    """Raise :class:`ExportError` unless the graph has the inputs and outputs sherpa feeds by
    position, with cache shapes matching the metadata."""
    ins = [i.name for i in onnx_model.graph.input]
    outs = [o.name for o in onnx_model.graph.output]
    if ins != ONNX_INPUTS or outs != ONNX_OUTPUTS:
        raise ExportError(f"unexpected graph I/O: inputs {ins}, outputs {outs}")
    dims = {i.name: [d.dim_value or None for d in i.type.tensor_type.shape.dim]
            for i in onnx_model.graph.input}
    want = {"cache_last_channel": [meta["cache_last_channel_dim1"], None, meta["cache_last_channel_dim3"]],
            "cache_last_time": [meta["cache_last_time_dim1"], meta["cache_last_time_dim2"], None]}
    for name, w in want.items():
        got = dims[name][1:]
        if any(x is not None and g is not None and int(x) != g for x, g in zip(w, got)):
            raise ExportError(f"{name} has shape [B, {got}], metadata says {w}")


def export_for_sherpa(nemo_path: str | Path, out_dir: str | Path,
                      latency: str | None = None) -> dict[str, str]:
    """Export ``nemo_path`` (a cache-aware CTC or hybrid RNNT/CTC ``.nemo``; the CTC head is used)
    at ``latency`` (a Brogue latency name such as "72_5"; None: the model's default) into
    ``out_dir`` as ``model.onnx`` + ``tokens.txt``. Returns the metadata props written."""
    import onnx
    import torch

    model = load_nemo(nemo_path)
    kind = model_head(model)
    if kind == "rnnt":
        raise ExportError("an RNNT model has no CTC head; sherpa-onnx's NeMo CTC recognizer needs one")
    if getattr(model.encoder, "att_context_style", None) is None:
        raise ExportError(f"{type(model.encoder).__name__} is not a cache-aware streaming encoder")
    if hasattr(model, "get_enabled_adapters") and model.get_enabled_adapters():
        model.set_enabled_adapters(enabled=False)
    select_latency(model, latency)
    lat = latency_settings(model.encoder, mel_config(model))
    tokens = vocabulary(model, "ctc")["tokens"]
    meta = sherpa_metadata(model, lat, len(tokens))

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = {"cache_support": True}
    if kind == "hybrid":
        config["decoder_type"] = "ctc"
    model.set_export_config(config)
    path = out / "model.onnx"
    with torch.inference_mode():
        model.export(str(path))
    graph = onnx.load(str(path))
    check_graph(graph, meta)
    del graph.metadata_props[:]
    for k, v in meta.items():
        graph.metadata_props.add(key=k, value=v)
    onnx.save(graph, str(path))
    write_tokens(out / "tokens.txt", tokens)
    return meta


def recognizer(model_dir: str | Path, num_threads: int = 1, feature_dim: int = 80):
    """sherpa-onnx's streaming recognizer on an export of :func:`export_for_sherpa` (greedy CTC,
    endpointing off). Raises ImportError if sherpa-onnx is not installed."""
    import sherpa_onnx

    d = Path(model_dir)
    return sherpa_onnx.OnlineRecognizer.from_nemo_ctc(
        model=str(d / "model.onnx"), tokens=str(d / "tokens.txt"), num_threads=num_threads,
        sample_rate=16000, feature_dim=feature_dim, decoding_method="greedy_search",
        enable_endpoint_detection=False)


def export_props(model_dir: str | Path) -> dict[str, str]:
    """The metadata props of ``model_dir/model.onnx`` (read without loading the weights)."""
    import onnx

    graph = onnx.load(str(Path(model_dir) / "model.onnx"), load_external_data=False)
    return {p.key: p.value for p in graph.metadata_props}


def window_of(model_dir: str | Path) -> tuple[int, int]:
    """``(window_size, chunk_shift)`` from the export's metadata props."""
    props = export_props(model_dir)
    return int(props["window_size"]), int(props["chunk_shift"])


def tail_padding(n_samples: int, window: int, shift: int, hop: int = 160) -> int:
    """Zero samples to append to an utterance of ``n_samples`` so that sherpa-onnx decodes every
    frame of it, and no more.

    sherpa-onnx only runs a window when a frame beyond it exists (``processed + window < ready``) and
    drops a short last window, so the tail of an utterance is lost unless the caller pads it.
    After ``input_finished`` it has ``round(n / hop)`` frames; window ``k`` reads frames
    ``[k*shift, k*shift + window)``, its new ones being the last ``shift`` of them. The last window
    that holds a real frame is ``k = ceil((frames - window) / shift)``; it runs once
    ``k*shift + window + 1`` frames exist.
    """
    frames = (n_samples + hop // 2) // hop
    k = max(0, -(-(frames - window) // shift))
    return max(0, k * shift + window + 1 - frames) * hop


def transcribe(rec, audios: list[np.ndarray], window: int, shift: int, packet: int = 3840) -> list[str]:
    """Each of ``audios`` (float32, 16 kHz) streamed alone through ``rec`` in ``packet``-sample
    pieces (tail-padded, see :func:`tail_padding`); the final transcripts."""
    texts = []
    for a in audios:
        s = rec.create_stream()
        for pos in range(0, len(a), packet):
            s.accept_waveform(16000, a[pos:pos + packet])
            while rec.is_ready(s):
                rec.decode_stream(s)
        s.accept_waveform(16000, np.zeros(tail_padding(len(a), window, shift), dtype=np.float32))
        s.input_finished()
        while rec.is_ready(s):
            rec.decode_stream(s)
        texts.append(" ".join(rec.get_result(s).split()))
    return texts


def main(argv=None) -> None:
    import json

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("nemo")
    p.add_argument("out_dir")
    p.add_argument("--latency", default=None, help="Brogue latency name, e.g. 72_5 (default: the model's)")
    p.add_argument("--check", default=None,
                   help="a NeMo manifest: decode its clips with sherpa-onnx, print WER")
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    meta = export_for_sherpa(a.nemo, a.out_dir, a.latency)
    print(json.dumps(meta, indent=1))
    if a.check:
        import jiwer

        from brogue.clients.eval import load_audio, normalise

        rows = [json.loads(l) for l in Path(a.check).read_text().splitlines() if l.strip()]
        audios = [load_audio(str(Path(a.check).parent / r["audio_filepath"]), 16000) for r in rows]
        hyps = transcribe(recognizer(a.out_dir, a.threads), audios, *window_of(a.out_dir))
        for r, h in zip(rows, hyps):
            print(f"REF {r['text']}\nHYP {h}")
        wer = jiwer.wer([normalise(r["text"]) for r in rows], [normalise(h) or "<empty>" for h in hyps])
        print(f"sherpa-onnx WER {100 * wer:.2f}% on {len(rows)} clips")


if __name__ == "__main__":
    main()
