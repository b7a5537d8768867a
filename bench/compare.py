"""Side-by-side throughput of the same clips through five paths, as fast as each path goes.

Every path streams the same clips, ``streams`` at a time, chunk by chunk, without real-time pacing,
and reports audio seconds per wall second and WER against the clips' texts (equal accuracy is part
of the comparison: the ONNX paths give identical transcripts; NeMo's may differ in the last digits
of a log-prob, so rarely in a token):

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
import time
from pathlib import Path

import numpy as np

from brogue.engine.metadata import ModelMeta

from .clients import ws_stream
from .load import Clip
from .stack import Stack


def _rate(name: str, audio_s: float, wall: float, hyps: dict[str, str], clips: list[Clip], **extra) -> dict:
    import jiwer

    refs = [c.text for c in clips if c.name in hyps]
    out = [hyps[c.name] for c in clips if c.name in hyps]
    return {"path": name, "audio_s": round(audio_s, 1), "wall_s": round(wall, 2),
            "audio_s_per_s": round(audio_s / wall, 2), "completed": len(out), "of": len(clips),
            "wer": round(100 * jiwer.wer(refs, [h or "<empty>" for h in out]), 2) if out else None, **extra}


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
    hyps, errors = asyncio.run(main())
    wall = time.monotonic() - t0
    return _rate(name, sum(c.seconds for c in clips if c.name in hyps), wall, hyps, clips, errors=len(errors),
                 adapters_in_use=len({t.adapter for t in tenants}))


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
    hyps = asyncio.run(main())
    wall = time.monotonic() - t0
    return _rate("direct_triton", sum(c.seconds for c in clips), wall, hyps, clips)


def in_process_throughput(model_dir: Path, clips: list[Clip], streams: int, threads: int = 0) -> dict:
    """Batches of ``streams`` clips, each stepped chunk by chunk in lock step (base model)."""
    from brogue.engine.runner import StreamingRunner

    runner = StreamingRunner(model_dir, threads=threads)
    hyps = {}
    t0 = time.monotonic()
    for b in range(0, len(clips), streams):
        batch = clips[b:b + streams]
        audios = [np.frombuffer(c.pcm16, "<i2").astype(np.float32) / 32768 for c in batch]
        states = runner.transcribe(audios)
        for c, st in zip(batch, states):
            hyps[c.name] = runner.detok.decode(st.tokens)
    wall = time.monotonic() - t0
    return _rate("in_process", sum(c.seconds for c in clips), wall, hyps, clips)


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
    return _rate("nemo_pytorch", sum(c.seconds for c in clips), wall, hyps, clips)


def ratios(results: dict[str, dict]) -> dict[str, float]:
    """The comparison ratios of throughput (above 1: the first path is faster)."""
    r = {}

    def put(name, a, b):
        if a in results and b in results and results[b]["audio_s_per_s"]:
            r[name] = round(results[a]["audio_s_per_s"] / results[b]["audio_s_per_s"], 2)

    put("brogue/in_process", "base", "in_process")
    put("mixed_adapters/base", "mixed", "base")
    put("brogue/nemo_pytorch", "base", "nemo_pytorch")
    put("brogue/direct_triton", "base", "direct_triton")
    return r
