"""Clients of a running gateway, as the serving tests drive it: a paced WebSocket stream that can
pause halfway (for changes made while streams are live), and the audio and header helpers."""

from __future__ import annotations

import asyncio
import json

import numpy as np
from websockets.asyncio.client import connect

# Endpoints never fire within these few-second streams: each stream is one utterance, whose final
# (at "close") holds every token, to compare with the reference runner's tokens of the whole stream.
ONE_UTTERANCE = {"stop_history_ms": 60000, "stop_history_eou_ms": 60000}


def pcm16(audio: np.ndarray) -> np.ndarray:
    return (np.clip(audio, -1, 1) * 32767).astype("<i2")


async def ws_stream(url, key, pcm, *, ssl_ctx=None, frame=3200, pace=0.05, halfway=None, resume=None,
                    endpointing=ONE_UTTERANCE):
    """Stream ``pcm`` (int16, 16 kHz) over the WebSocket API; returns (ready, results, transcript).

    With ``halfway``/``resume`` (asyncio events), sets ``halfway`` after half of the audio and waits
    for ``resume`` before sending the rest.
    """
    async with connect(url, additional_headers=bearer(key), ssl=ssl_ctx, open_timeout=15) as ws:
        await ws.send(json.dumps({"type": "config", "sample_rate": 16000, "encoding": "pcm16",
                                  "endpointing": endpointing}))
        ready = json.loads(await asyncio.wait_for(ws.recv(), 15))
        assert ready["type"] == "ready", ready
        results = []

        async def read():
            async for raw in ws:
                msg = json.loads(raw)
                assert msg["type"] in ("partial", "final", "end"), msg
                if msg["type"] == "end":
                    return True
                results.append(msg)
            return False

        reader = asyncio.create_task(read())
        frames = [pcm[i:i + frame].tobytes() for i in range(0, len(pcm), frame)]
        for i, f in enumerate(frames):
            if halfway is not None and i == len(frames) // 2:
                halfway.set()
                await asyncio.wait_for(resume.wait(), 60)
            await ws.send(f)
            await asyncio.sleep(pace)
        await ws.send(json.dumps({"type": "close"}))
        ended = await asyncio.wait_for(reader, 120)
        assert ended, f"stream closed without an 'end' message; results: {results}"
    transcript = " ".join(m["transcript"] for m in results if m["type"] == "final")
    return ready, results, transcript


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}
