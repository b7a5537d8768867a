"""A model instance with every stream slot taken: the next stream is refused as "try again later"
over WebSocket (close 1013) and Riva gRPC (RESOURCE_EXHAUSTED), and the live streams finish intact."""

from __future__ import annotations

import asyncio
import dataclasses
import json

import grpc
import numpy as np
import pytest
import riva.client
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from brogue.asr_reply import CAPACITY_ERROR
from conftest import (DEMO_KEYS, TEST_EXIT_TIMEOUT, demo_speech, model_config, reference_text, start_gateway,
                      stop_gateway)

pytestmark = pytest.mark.nemo


@pytest.fixture(scope="module")
def two_slot_server(demo_repo, tmp_path_factory):
    """Triton serving the demo model with a state pool of two rows (MAX_STREAMS=2)."""
    from brogue.server.tritonserver import TritonProcess

    root = tmp_path_factory.mktemp("two-slots")
    (root / "exported").symlink_to(demo_repo.root / "exported")
    (root / "adapters").symlink_to(demo_repo.store_dir)
    model_config(root, "asr_streaming", MAX_STREAMS="2", MAX_BATCH="2")
    repo = dataclasses.replace(demo_repo, root=root)
    triton = TritonProcess(root, models=("asr_streaming",), exit_timeout=TEST_EXIT_TIMEOUT).start(timeout=240)
    gw = start_gateway(repo, triton.grpc_url, tmp_path_factory.mktemp("gw"))
    yield gw
    stop_gateway(gw)
    triton.stop()


def pcm16(audio):
    return (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()


def test_a_stream_past_the_pool_is_refused_and_the_live_ones_finish(two_slot_server, demo_repo):
    gw = two_slot_server
    audios = [demo_speech(np.random.default_rng(40 + i), 3.0) for i in range(2)]

    async def open_stream(audio):
        ws = await connect(gw.ws_url, additional_headers={"Authorization": f"Bearer {DEMO_KEYS['base']}"})
        await ws.send(json.dumps({"type": "config", "sample_rate": 16000, "encoding": "pcm16"}))
        assert json.loads(await ws.recv())["type"] == "ready"
        await ws.send(pcm16(audio[:16000]))  # a second of audio: the stream holds a pool row
        return ws

    async def finish(ws, audio):
        await ws.send(pcm16(audio[16000:]))
        await ws.send(json.dumps({"type": "close"}))
        msgs = [json.loads(m) async for m in ws]
        return "".join(m["transcript"] for m in msgs if m["type"] == "final")

    async def third_ws():
        async with connect(gw.ws_url, additional_headers={"Authorization": f"Bearer {DEMO_KEYS['base']}"}) as ws:
            await ws.send(json.dumps({"type": "config", "sample_rate": 16000, "encoding": "pcm16"}))
            await ws.recv()  # ready: the pool is the model's, asked on the stream's first chunk
            await ws.send(pcm16(audios[0][:16000]))
            msgs = []
            try:
                async for m in ws:
                    msgs.append(json.loads(m))
            except ConnectionClosed:  # closed with 1013, not 1000
                pass
            return msgs, ws.close_code

    def third_riva():
        auth = riva.client.Auth(uri=gw.grpc_url, metadata_args=[["x-api-key", DEMO_KEYS["base"]]])
        asr = riva.client.ASRService(auth)
        cfg = riva.client.StreamingRecognitionConfig(
            config=riva.client.RecognitionConfig(encoding=riva.client.AudioEncoding.LINEAR_PCM,
                                                 sample_rate_hertz=16000, audio_channel_count=1),
            interim_results=True)
        chunks = [pcm16(audios[1][i:i + 4000]) for i in range(0, 24000, 4000)]
        with pytest.raises(grpc.RpcError) as e:
            list(asr.streaming_response_generator(audio_chunks=iter(chunks), streaming_config=cfg))
        return e.value

    async def run():
        held = [await open_stream(a) for a in audios]
        await asyncio.sleep(1.0)  # both first chunks reached the model: both rows are taken
        ws_refusal = await third_ws()
        riva_refusal = await asyncio.to_thread(third_riva)
        texts = [await finish(ws, a) for ws, a in zip(held, audios)]
        return ws_refusal, riva_refusal, texts

    (msgs, close_code), riva_error, texts = asyncio.run(run())
    errors = [m for m in msgs if m["type"] == "error"]
    assert errors and errors[0]["code"] == "capacity" and CAPACITY_ERROR in errors[0]["message"], msgs
    assert close_code == 1013
    assert riva_error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and CAPACITY_ERROR in riva_error.details()
    for text, audio in zip(texts, audios):  # the live streams never noticed
        want = reference_text(demo_repo, np.frombuffer(pcm16(audio), "<i2").astype(np.float32) / 32768)
        assert text.replace(" ", "") == want.replace(" ", "")
    # Both rows are free again: a new stream runs.
    ws = asyncio.run(asyncio.wait_for(_one(gw, audios[0]), 60))
    assert ws.replace(" ", "") == reference_text(
        demo_repo, np.frombuffer(pcm16(audios[0]), "<i2").astype(np.float32) / 32768).replace(" ", "")


async def _one(gw, audio) -> str:
    async with connect(gw.ws_url, additional_headers={"Authorization": f"Bearer {DEMO_KEYS['base']}"}) as ws:
        await ws.send(json.dumps({"type": "config", "sample_rate": 16000, "encoding": "pcm16"}))
        await ws.recv()
        await ws.send(pcm16(audio))
        await ws.send(json.dumps({"type": "close"}))
        msgs = [json.loads(m) async for m in ws]
    return "".join(m["transcript"] for m in msgs if m["type"] == "final")
