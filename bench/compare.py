"""Side-by-side throughput of the same clips through five paths, as fast as each path goes.

Every path streams the same clips, ``streams`` at a time, chunk by chunk, without real-time pacing,
and reports audio seconds per wall second, the server side's CPU seconds per audio second
(``cpu_per_audio_s``: the gateway's and Triton's process trees for the served paths, this process
for the in-process ones; the bench's clients are not counted) and WER against the clips' texts
(equal accuracy is part of the comparison: the ONNX paths give identical transcripts; NeMo's may
differ in the last digits of a log-prob, so rarely in a token):

- ``base``: the gateway end to end (WebSocket), every stream on the base tenant;
- ``mixed``: the same with the streams cycling over the adapter tenants, so every batch holds up to
  ``adapters`` different adapters (for ``mixed_adapters/base``);
- ``direct_triton``: the same chunks sent straight to ``asr_streaming`` with tritonclient's asyncio
  sequence API, one gRPC stream per sequence, no gateway;
- ``in_process``: :class:`~brogue.engine.runner.StreamingRunner` in this process, every stream's
  chunk in one batched step (no serving at all);
- ``nemo_pytorch``: NeMo's own cache-aware streaming in PyTorch, the loop of NeMo's
  ``speech_to_text_cache_aware_streaming_infer.py`` (``CacheAwareStreamingAudioBuffer`` over a batch
  of streams, ``conformer_stream_step``), needing the source ``.nemo`` and torch.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

import numpy as np

from brogue.engine.metadata import ModelMeta

from .clients import ws_stream
from .load import Clip
from .stack import Stack


def _rate(name: str, audio_s: float, wall: float, hyps: dict[str, str], clips: list[Clip], cpu_s: float | None = None,
          **extra) -> dict:
    import jiwer

    refs = [c.text for c in clips if c.name in hyps]
    out = [hyps[c.name] for c in clips if c.name in hyps]
    return {"path": name, "audio_s": round(audio_s, 1), "wall_s": round(wall, 2),
            "audio_s_per_s": round(audio_s / wall, 2),
            "cpu_per_audio_s": round(cpu_s / audio_s, 4) if cpu_s is not None and audio_s else None,
            "completed": len(out), "of": len(clips),
            "wer": round(100 * jiwer.wer(refs, [h or "<empty>" for h in out]), 2) if out else None, **extra}


class _ServerCPU:
    """CPU seconds of the stack's servers (gateway and Triton, each with its children) over a block."""

    def __init__(self, stack: Stack, names=("gateway", "triton")):
        self.stack, self.names = stack, names

    def _now(self) -> float:
        from .procstat import tree_usage

        pids = self.stack.pids()
        return sum(tree_usage(pids[n])[0] for n in self.names if n in pids)

    def __enter__(self) -> "_ServerCPU":
        self.cpu_s, self._t0 = None, self._now()
        return self

    def __exit__(self, *exc) -> None:
        self.cpu_s = self._now() - self._t0


def _shares(clips: list[Clip], streams: int) -> list[list[Clip]]:
    return [clips[i::streams] for i in range(streams)]


def gateway_throughput(stack: Stack, clips: list[Clip], streams: int, *, mixed: bool = False) -> dict:
    tenants = [t for t in stack.tenants if t.adapter] if mixed else [t for t in stack.tenants if not t.adapter]
    name = "mixed" if mixed else "base"

    async def worker(i, share, hyps, errors):
        t = tenants[i % len(tenants)]
        for clip in share:
            rec = await ws_stream(stack.ws_url, t.key, t.name, clip.name, clip.pcm16, frame_ms=500, realtime=False)
            if rec.finished:
                hyps[clip.name] = rec.transcript
            else:
                errors.append(rec.error)

    async def main():
        hyps, errors = {}, []
        await asyncio.gather(*(worker(i, s, hyps, errors) for i, s in enumerate(_shares(clips, streams))))
        return hyps, errors

    t0 = time.monotonic()
    with _ServerCPU(stack) as cpu:
        hyps, errors = asyncio.run(main())
    wall = time.monotonic() - t0
    return _rate(name, sum(c.seconds for c in clips if c.name in hyps), wall, hyps, clips, cpu.cpu_s,
                 errors=len(errors), adapters_in_use=len({t.adapter for t in tenants}))


def direct_triton_throughput(stack: Stack, clips: list[Clip], streams: int) -> dict:
    """The chunks the gateway would send, straight to Triton (tritonclient.grpc.aio, no gateway)."""
    import tritonclient.grpc.aio as aioclient

    from brogue.asr_io import parse_reply, request_inputs

    meta = stack.meta
    lat = meta.latency(None)
    chunk = lat.shift_size[1] * meta.mel.hop_length
    tenants = [t for t in stack.tenants if not t.adapter]
    url = stack.triton.grpc_url

    async def one(client, corrid, clip, adapter):
        x = np.frombuffer(clip.pcm16, "<i2").astype(np.float32) / 32768
        pieces = [x[i:i + chunk] for i in range(0, len(x), chunk)] or [x]
        queue: asyncio.Queue = asyncio.Queue()

        async def requests():
            while (item := await queue.get()) is not None:
                yield item

        replies = client.stream_infer(requests())
        text = []
        for k, piece in enumerate(pieces):
            end = k == len(pieces) - 1
            await queue.put({"model_name": "asr_streaming", "sequence_id": corrid, "sequence_start": k == 0,
                             "sequence_end": end,
                             "inputs": request_inputs(piece, start=k == 0, adapter=adapter)})
            result, error = await replies.__anext__()
            if error is not None:
                raise error
            text.append(parse_reply(result).text)
        await queue.put(None)
        return " ".join("".join(text).split())

    async def worker(i, share, hyps):
        adapter = tenants[i % len(tenants)].adapter
        client = aioclient.InferenceServerClient(url)
        try:
            for k, clip in enumerate(share):
                hyps[clip.name] = await one(client, 7_000_000 + i * 10_000 + k, clip, adapter)
        finally:
            await client.close()

    async def main():
        hyps = {}
        await asyncio.gather(*(worker(i, s, hyps) for i, s in enumerate(_shares(clips, streams))))
        return hyps

    t0 = time.monotonic()
    with _ServerCPU(stack, ("triton",)) as cpu:
        hyps = asyncio.run(main())
    wall = time.monotonic() - t0
    return _rate("direct_triton", sum(c.seconds for c in clips), wall, hyps, clips, cpu.cpu_s)


def in_process_throughput(model_dir: Path, clips: list[Clip], streams: int, threads: int = 0,
                          decoder: str = "auto") -> dict:
    """Batches of ``streams`` clips, each stepped chunk by chunk in lock step (base model)."""
    from brogue.engine.runner import StreamingRunner

    runner = StreamingRunner(model_dir, threads=threads, decoder=decoder)
    hyps = {}
    cpu0 = time.process_time()
    t0 = time.monotonic()
    for b in range(0, len(clips), streams):
        batch = clips[b:b + streams]
        audios = [np.frombuffer(c.pcm16, "<i2").astype(np.float32) / 32768 for c in batch]
        states = runner.transcribe(audios)
        for c, st in zip(batch, states):
            hyps[c.name] = runner.detok.decode(st.tokens)
    wall = time.monotonic() - t0
    return _rate("in_process", sum(c.seconds for c in clips), wall, hyps, clips, time.process_time() - cpu0)


def nemo_throughput(nemo_path: Path, clips: list[Clip], streams: int, threads: int = 2) -> dict:
    """NeMo's batched cache-aware streaming loop in PyTorch (eval, no grad, greedy CTC/RNNT)."""
    import torch
    from nemo.collections.asr.models import ASRModel
    from nemo.collections.asr.parts.utils.streaming_utils import CacheAwareStreamingAudioBuffer

    torch.set_num_threads(threads)
    model = ASRModel.restore_from(str(nemo_path), map_location="cpu")
    model.eval()
    model.preprocessor.featurizer.dither = 0.0
    enc = model.encoder
    enc.setup_streaming_params()
    hyps = {}
    cpu0 = time.process_time()
    t0 = time.monotonic()
    with torch.inference_mode():
        for b in range(0, len(clips), streams):
            batch = clips[b:b + streams]
            buf = CacheAwareStreamingAudioBuffer(model=model, online_normalization=False)
            for c in batch:
                x = np.frombuffer(c.pcm16, "<i2").astype(np.float32) / 32768
                feats, flen = buf.preprocess_audio(x)
                buf.append_processed_signal(feats[:, :, : int(flen[0])], stream_id=-1)
            ch, tm, ln = enc.get_initial_cache_state(batch_size=len(batch))
            prev_hyp, pred_out = None, None
            for step, (chunk, chunk_len) in enumerate(iter(buf)):
                res = model.conformer_stream_step(
                    processed_signal=chunk, processed_signal_length=chunk_len, cache_last_channel=ch,
                    cache_last_time=tm, cache_last_channel_len=ln, keep_all_outputs=buf.is_buffer_empty(),
                    previous_hypotheses=prev_hyp, previous_pred_out=pred_out,
                    drop_extra_pre_encoded=0 if step == 0 else enc.streaming_cfg.drop_extra_pre_encoded,
                    return_transcription=True)
                pred_out, texts, ch, tm, ln, prev_hyp = res[:6]
            for c, h in zip(batch, texts):
                hyps[c.name] = " ".join((h.text if hasattr(h, "text") else str(h)).split())
    wall = time.monotonic() - t0
    return _rate("nemo_pytorch", sum(c.seconds for c in clips), wall, hyps, clips, time.process_time() - cpu0)


def sherpa_throughput(model_dir: Path, clips: list[Clip], streams: int, nemo: Path, threads: int = 1) -> dict:
    """sherpa-onnx's engine on the same clips, ``streams`` at a time, one chunk packet per stream per
    round (:func:`bench.sherpa.measure`, in a spawned process), on an export of ``nemo`` at the
    latency of the Brogue export in ``model_dir``; ``threads`` ORT threads (1: sherpa's spin with
    more, which would only make it dearer)."""
    from . import sherpa

    latency, packet = sherpa.brogue_latency(model_dir)
    with tempfile.TemporaryDirectory(prefix="sherpa-onnx-") as tmp:
        d = sherpa.prepare_sherpa(nemo, latency, tmp)
        r = sherpa.measure_isolated("sherpa_onnx", d, sherpa.as_audio(clips), streams, threads, packet)
    return _rate("sherpa_onnx", r["audio_s"], r["wall_s"], r["hyps"], clips, r["cpu_s"], threads=threads)


# name -> (numerator path, denominator path, measure); above 1 the first path is better: faster
# (audio s per s) or cheaper (CPU s per audio s).
RATIOS = {
    "brogue/in_process": ("base", "in_process", "audio_s_per_s"),
    "brogue/in_process cpu": ("base", "in_process", "cpu_per_audio_s"),
    "mixed_adapters/base": ("mixed", "base", "audio_s_per_s"),
    "brogue/nemo_pytorch": ("base", "nemo_pytorch", "audio_s_per_s"),
    "brogue/nemo_pytorch cpu": ("base", "nemo_pytorch", "cpu_per_audio_s"),
    "brogue/direct_triton": ("base", "direct_triton", "audio_s_per_s"),
    "brogue/sherpa_onnx cpu": ("base", "sherpa_onnx", "cpu_per_audio_s"),
    "in_process/sherpa_onnx cpu": ("in_process", "sherpa_onnx", "cpu_per_audio_s"),
}


def ratio(a: dict, b: dict, measure: str) -> float | None:
    """``a`` over ``b`` on ``measure``, oriented so that above 1 means ``a`` is better."""
    x, y = a.get(measure), b.get(measure)
    if not x or not y:
        return None
    return round(x / y if measure == "audio_s_per_s" else y / x, 3)


def ratios(rounds: list[dict[str, dict]], skip=()) -> dict[str, dict]:
    """Each ratio of :data:`RATIOS` per round (the paths of one round ran back to back), as the
    median over the rounds with the range: ``{name: {"median", "min", "max", "rounds"}}``. Paths
    measured once (NeMo) are compared with every round's other path."""
    out = {}
    for name, (a, b, measure) in RATIOS.items():
        if name in skip:
            continue
        values = [ratio(r[a], r[b], measure) for r in rounds if a in r and b in r]
        values = [v for v in values if v is not None]
        if values:
            out[name] = {"median": round(float(np.median(values)), 3), "min": min(values), "max": max(values),
                         "rounds": values}
    return out


def summarise(rounds: list[dict[str, dict]]) -> dict[str, dict]:
    """Per path, the median over the rounds of its speed and CPU cost, with their ranges (the other
    fields from its first round)."""
    out = {}
    for name in dict.fromkeys(k for r in rounds for k in r):
        runs = [r[name] for r in rounds if name in r]
        row = dict(runs[0])
        for m in ("audio_s_per_s", "cpu_per_audio_s"):
            vals = [x[m] for x in runs if x.get(m) is not None]
            if vals:
                row[m] = round(float(np.median(vals)), 4)
                row[f"{m}_range"] = [min(vals), max(vals)]
        row["runs"] = len(runs)
        out[name] = row
    return out
