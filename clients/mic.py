"""``brogue mic``: a terminal client that streams the microphone (or a WAV file, in real time) over
the WebSocket API and prints partials on one updating line and finals on their own lines.

The microphone needs the ``mic`` extra (``sounddevice``, with Debian's ``libportaudio2``); a file
source (``--file``) needs nothing more and plays through the same code path, paced like live audio.
"""

from __future__ import annotations

import json
import queue
import sys
import threading
import time
from pathlib import Path

import numpy as np
from websockets.sync.client import connect

FRAME_MS = 50


def _file_frames(path: Path, stop: threading.Event):
    """16-bit frames of a WAV/FLAC file, paced in real time: (bytes, sample_rate) per frame."""
    import soundfile as sf

    audio, rate = sf.read(str(path), dtype="float32", always_2d=True)
    audio = audio.mean(axis=1)
    n = rate * FRAME_MS // 1000
    start = time.monotonic()
    for i, pos in enumerate(range(0, len(audio), n)):
        if stop.is_set():
            return
        time.sleep(max(0.0, start + i * FRAME_MS / 1000 - time.monotonic()))
        yield (np.clip(audio[pos:pos + n], -1, 1) * 32767).astype("<i2").tobytes(), rate


def _mic_frames(rate: int, stop: threading.Event):
    try:
        import sounddevice as sd
    except (ImportError, OSError) as e:
        raise SystemExit(f"microphone capture needs `pip install 'brogue[mic]'` and libportaudio2 ({e})") from None
    q: queue.Queue = queue.Queue()
    with sd.InputStream(samplerate=rate, channels=1, dtype="int16", blocksize=rate * FRAME_MS // 1000,
                        callback=lambda data, frames, t, status: q.put(bytes(data))):
        while not stop.is_set():
            yield q.get(), rate


def run_mic(url: str, api_key: str, *, file: Path | None = None, rate: int = 16000, out=sys.stdout,
            ssl_context=None) -> list[dict]:
    """Stream until the source ends (or Ctrl-C); print results; return the final messages."""
    stop = threading.Event()
    frames = _file_frames(file, stop) if file else _mic_frames(rate, stop)
    first, first_rate = next(frames)
    finals: list[dict] = []
    with connect(url, additional_headers={"Authorization": f"Bearer {api_key}"}, ssl=ssl_context) as ws:
        ws.send(json.dumps({"type": "config", "sample_rate": first_rate, "encoding": "pcm16"}))
        ready = json.loads(ws.recv())
        if ready["type"] == "error":
            raise SystemExit(f"{ready['code']}: {ready['message']}")
        out.write(f"# tenant {ready['tenant']}, adapter {ready['adapter'] or 'base'}, "
                  f"{ready['chunk_ms']} ms chunks; Ctrl-C to stop\n")

        def reader():
            for raw in ws:
                msg = json.loads(raw)
                if msg["type"] == "partial":
                    out.write(f"\r… {msg['transcript']}\x1b[K")
                elif msg["type"] == "final":
                    finals.append(msg)
                    out.write(f"\r{msg['start']:7.2f}s  {msg['transcript']}\x1b[K\n")
                elif msg["type"] == "error":
                    out.write(f"\rerror {msg['code']}: {msg['message']}\n")
                out.flush()

        t = threading.Thread(target=reader, daemon=True)
        t.start()
        try:
            ws.send(first)
            for data, _ in frames:
                ws.send(data)
        except KeyboardInterrupt:
            stop.set()
        ws.send(json.dumps({"type": "close"}))
        t.join(60)
    return finals
