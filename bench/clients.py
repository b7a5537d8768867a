"""One live stream through the gateway, paced like a caller, timed from the client's side.

:func:`ws_stream` speaks the WebSocket protocol (docs/websocket.md), :func:`riva_stream` Riva's
``StreamingRecognize`` over gRPC. Both send 16 kHz PCM16 in ``frame_ms`` frames at real-time pace
(each frame due at ``start + k * frame_ms``, then delayed by a uniform ``[0, jitter_ms]``, the way a
network delivers it), end the audio, and read until the stream is over. Each returns a
:class:`StreamRecord`:

- ``first_partial_s``: from the first audio frame sent to the first non-empty partial;
- ``final_latency_s``: from the last audio frame sent (the end of speech: the clips are trimmed) to
  the stream's last final, or to its end when the last final came earlier;
- ``lag_s``: how far the end came after the audio's own duration (above 0: slower than real time);
- ``error``: the server's error (``code: message``), or what the client saw, ``None`` on success.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import random
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

import numpy as np

FRAME_MS = 100


@dataclass
class StreamRecord:
    api: str
    tenant: str
    clip: str
    audio_s: float
    first_partial_s: float | None = None
    final_latency_s: float | None = None
    lag_s: float | None = None
    transcript: str = ""
    error: str | None = None
    finished: bool = False
    ended_early: bool = False  # the server ended the stream cleanly before all audio was sent (a drain)
    t_start: float = 0.0  # monotonic: connect
    t_end: float = 0.0  # monotonic: end, error or timeout

    def as_dict(self) -> dict:
        return asdict(self)


def frames(pcm16: bytes, frame_ms: int = FRAME_MS) -> list[bytes]:
    step = 16000 * 2 * frame_ms // 1000
    return [pcm16[i:i + step] for i in range(0, len(pcm16), step)]


def _due(start: float, k: int, frame_ms: int, jitter_ms: float, rng: random.Random) -> float:
    """When frame ``k`` goes: its real-time slot, delayed by a uniform ``[0, jitter_ms]``."""
    return start + k * frame_ms / 1000 + (rng.uniform(0, jitter_ms) / 1000 if jitter_ms else 0.0)


async def paced(parts: list[bytes], frame_ms: int, jitter_ms: float, rng: random.Random, on_first=None,
                realtime: bool = True):
    """Yield ``parts`` at real-time pace with jitter (or at once: ``realtime=False``); ``on_first()``
    is called as the first goes."""
    start = time.monotonic()
    for k, part in enumerate(parts):
        if realtime:
            await asyncio.sleep(max(0.0, _due(start, k, frame_ms, jitter_ms, rng) - time.monotonic()))
        if k == 0 and on_first is not None:
            on_first()
        yield part


async def ws_stream(url: str, key: str, tenant: str, clip: str, pcm16: bytes, *, frame_ms: int = FRAME_MS,
                    jitter_ms: float = 0.0, seed: int = 0, timeout: float = 120.0,
                    realtime: bool = True) -> StreamRecord:
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed, InvalidStatus

    rec = StreamRecord("ws", tenant, clip, len(pcm16) / 32000, t_start=time.monotonic())
    rng = random.Random(seed)
    t = {}
    finals = []

    async def reader(ws):
        async for raw in ws:
            msg = json.loads(raw)
            kind = msg.get("type")
            now = time.monotonic()
            if kind == "partial" and msg.get("transcript") and "first_partial" not in t and "first" in t:
                t["first_partial"] = now
            elif kind == "final":
                finals.append(msg.get("transcript", ""))
                t["final"] = now
            elif kind == "error":
                rec.error = f"{msg.get('code')}: {msg.get('message')}"
                return
            elif kind == "end":
                t["end"] = now
                return

    try:
        async with asyncio.timeout(timeout):
            async with connect(url, additional_headers={"Authorization": f"Bearer {key}"}, max_size=1 << 22,
                               open_timeout=30) as ws:
                await ws.send(json.dumps({"type": "config", "sample_rate": 16000, "encoding": "pcm16"}))
                ready = json.loads(await ws.recv())
                if ready.get("type") != "ready":
                    rec.error = f"{ready.get('code')}: {ready.get('message')}"
                    return _finish(rec, t, finals)
                read = asyncio.create_task(reader(ws))
                try:
                    async for part in paced(frames(pcm16, frame_ms), frame_ms, jitter_ms, rng, realtime=realtime,
                                            on_first=lambda: t.setdefault("first", time.monotonic())):
                        if read.done():
                            break
                        try:
                            await ws.send(part)
                        except ConnectionClosed:  # a draining server ends streams early: "end", then 1001
                            break
                    else:
                        t["last"] = time.monotonic()
                    if not read.done():
                        with contextlib.suppress(ConnectionClosed):
                            await ws.send(json.dumps({"type": "close"}))
                    await read
                    if "end" not in t and rec.error is None:
                        rec.error = f"closed: {ws.close_code} {ws.close_reason}".strip()
                finally:
                    read.cancel()
    except InvalidStatus as e:
        rec.error = f"http {e.response.status_code}: {e.response.body.decode(errors='replace').strip()}"
    except ConnectionClosed as e:
        rec.error = rec.error or f"connection closed: {e}"
    except TimeoutError:
        rec.error = rec.error or f"timeout: no end within {timeout:g} s"
    except OSError as e:
        rec.error = f"connect: {e}"
    return _finish(rec, t, finals)


# Riva load streams use grpc's blocking API, one thread per stream, as Riva's own clients
# (riva.client) do. The asyncio client cannot be trusted with a server that ends a call while the
# client still writes: a write that fails after the server's status arrived overwrites that status
# with INTERNAL "Internal error from Core" (grpc/grpc#36066). A gateway that answers a Triton crash
# with UNAVAILABLE would then be scored as failing uncleanly; the blocking API reports the status.
_RIVA_THREADS = ThreadPoolExecutor(max_workers=1024, thread_name_prefix="riva-stream")


async def riva_stream(url: str, key: str, tenant: str, clip: str, pcm16: bytes, *, frame_ms: int = FRAME_MS,
                      jitter_ms: float = 0.0, seed: int = 0, timeout: float = 120.0,
                      channel=None) -> StreamRecord:
    """Riva ``StreamingRecognize``; ``channel`` is a blocking ``grpc.Channel`` to share (optional).
    Cancelling the task cancels the call."""
    calls = []
    run = functools.partial(_riva_stream_blocking, url, key, tenant, clip, pcm16, frame_ms, jitter_ms, seed, timeout,
                            channel, calls)
    try:
        return await asyncio.get_running_loop().run_in_executor(_RIVA_THREADS, run)
    except asyncio.CancelledError:
        for call in calls:
            call.cancel()
        raise


def _riva_stream_blocking(url, key, tenant, clip, pcm16, frame_ms, jitter_ms, seed, timeout, channel,
                          calls) -> StreamRecord:
    import grpc
    import riva.client.proto.riva_asr_pb2 as rasr
    import riva.client.proto.riva_asr_pb2_grpc as rasr_grpc
    import riva.client.proto.riva_audio_pb2 as raudio

    rec = StreamRecord("riva", tenant, clip, len(pcm16) / 32000, t_start=time.monotonic())
    rng = random.Random(seed)
    t = {}
    finals = []
    config = rasr.StreamingRecognitionConfig(
        config=rasr.RecognitionConfig(encoding=raudio.LINEAR_PCM, sample_rate_hertz=16000, language_code="en-US",
                                      max_alternatives=1),
        interim_results=True)

    def requests():
        yield rasr.StreamingRecognizeRequest(streaming_config=config)
        start = time.monotonic()
        for k, part in enumerate(frames(pcm16, frame_ms)):
            time.sleep(max(0.0, _due(start, k, frame_ms, jitter_ms, rng) - time.monotonic()))
            t.setdefault("first", time.monotonic())
            yield rasr.StreamingRecognizeRequest(audio_content=part)
        t["last"] = time.monotonic()

    own = channel is None
    channel = channel or grpc.insecure_channel(url)
    try:
        stub = rasr_grpc.RivaSpeechRecognitionStub(channel)
        # wait_for_ready: a channel in reconnect backoff (the gateway restarted) waits for it instead
        # of failing at once, as a long-lived client would set it
        call = stub.StreamingRecognize(requests(), metadata=[("x-api-key", key)], timeout=timeout, wait_for_ready=True)
        calls.append(call)
        for resp in call:
            now = time.monotonic()
            for r in resp.results:
                text = r.alternatives[0].transcript if r.alternatives else ""
                if r.is_final:
                    finals.append(text)
                    t["final"] = now
                elif text and "first_partial" not in t and "first" in t:
                    t["first_partial"] = now
        t["end"] = time.monotonic()
    except grpc.RpcError as e:
        rec.error = f"{e.code().name}: {e.details()}"
    finally:
        if own:
            channel.close()
    return _finish(rec, t, finals)


def _finish(rec: StreamRecord, t: dict, finals: list[str]) -> StreamRecord:
    rec.t_end = time.monotonic()
    rec.transcript = " ".join(f.strip() for f in finals if f.strip())
    if "first" in t and "first_partial" in t:
        rec.first_partial_s = t["first_partial"] - t["first"]
    if rec.error is None and "end" in t and "last" in t:
        rec.finished = True
        done = t["final"] if t.get("final", 0) > t["last"] else t["end"]
        rec.final_latency_s = done - t["last"]
        rec.lag_s = t["end"] - t["first"] - rec.audio_s
    elif rec.error is None and "end" in t:
        rec.ended_early = True  # ended by the server (finals, then end) while the client still had audio
    elif rec.error is None:
        rec.error = "stream ended without an end message"
    return rec


def pcm16_of(audio: np.ndarray) -> bytes:
    return (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()
