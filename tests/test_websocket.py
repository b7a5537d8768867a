"""The WebSocket API end to end: a real tritonserver, `brogue serve` as a subprocess, real clients."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time

import numpy as np
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from conftest import DEMO_KEYS, reference_text, demo_speech, start_gateway, stop_gateway

pytestmark = pytest.mark.nemo




def pcm16(audio):
    return (np.clip(audio, -1, 1) * 32767).astype("<i2")


async def stream_ws(url, key, data: bytes, *, config=None, frame=3200, pace=0.0, flush_at=None):
    """Send ``data`` as binary frames (optionally paced in real time), then close; return messages."""
    config = config or {"type": "config", "sample_rate": 16000, "encoding": "pcm16"}
    msgs = []
    async with connect(url, additional_headers={"Authorization": f"Bearer {key}"}, max_size=None) as ws:
        await ws.send(json.dumps(config))
        msgs.append(json.loads(await ws.recv()))
        if msgs[0]["type"] == "error":
            return msgs

        async def reader():
            async for m in ws:
                msgs.append({**json.loads(m), "_t": time.monotonic()})

        task = asyncio.create_task(reader())
        t0 = time.monotonic()
        try:
            for i, pos in enumerate(range(0, len(data), frame)):
                await ws.send(data[pos:pos + frame])
                if flush_at is not None and pos <= flush_at < pos + frame:
                    await ws.send(json.dumps({"type": "flush"}))
                if pace:
                    await asyncio.sleep(max(0.0, t0 + (i + 1) * pace - time.monotonic()))
            await ws.send(json.dumps({"type": "close"}))
        except ConnectionClosed:
            pass  # the server ended the stream (an error message says why)
        try:
            await asyncio.wait_for(task, 60)
        except ConnectionClosed:
            pass
    return msgs


def finals_text(msgs):
    return "".join(m["transcript"] for m in msgs if m["type"] == "final").replace(" ", "")


def test_real_time_stream_gets_partials_then_finals_equal_to_offline(gateway, demo_repo):
    audio = demo_speech(np.random.default_rng(10), 4.0)
    msgs = asyncio.run(stream_ws(gateway.ws_url, DEMO_KEYS["scot"], pcm16(audio).tobytes(), pace=0.1))
    kinds = [m["type"] for m in msgs]
    assert kinds[0] == "ready" and kinds[-1] == "end" and msgs[0]["adapter"] == demo_repo.refs["scot"]
    assert "partial" in kinds and kinds.index("partial") < kinds.index("final")
    want = reference_text(demo_repo, pcm16(audio).astype(np.float32) / 32768, "scot")
    assert want and finals_text(msgs) == want.replace(" ", "")
    for m in msgs:
        if m["type"] == "final":
            starts = [w["start"] for w in m["words"]]
            assert starts == sorted(starts)
            assert all(0 <= w["start"] < w["end"] <= 4.0 + 0.7 and 0 < w["confidence"] <= 1 for w in m["words"])


def test_two_tenants_at_once_each_get_their_adapter(gateway, demo_repo):
    audio = demo_speech(np.random.default_rng(11), 3.0)
    data = pcm16(audio).tobytes()

    async def both():
        return await asyncio.gather(stream_ws(gateway.ws_url, DEMO_KEYS["scot"], data),
                                    stream_ws(gateway.ws_url, DEMO_KEYS["carib"], data))

    scot, carib = asyncio.run(both())
    x = pcm16(audio).astype(np.float32) / 32768
    assert finals_text(scot) == reference_text(demo_repo, x, "scot").replace(" ", "")
    assert finals_text(carib) == reference_text(demo_repo, x, "carib").replace(" ", "")
    assert finals_text(scot) != finals_text(carib)


def test_8khz_mulaw_and_48khz_float32_are_resampled(gateway, demo_repo):
    from brogue.audio.codecs import AudioDecoder

    rng = np.random.default_rng(12)
    for rate, enc in ((8000, "mulaw"), (48000, "float32")):
        x = demo_speech(rng, 2.0 * rate / 16000)  # 2 s at `rate`
        raw = (rng.integers(0, 256, len(x), dtype=np.uint8).tobytes() if enc == "mulaw"
               else x.astype("<f4").tobytes())
        msgs = asyncio.run(stream_ws(gateway.ws_url, DEMO_KEYS["base"], raw,
                                     config={"type": "config", "sample_rate": rate, "encoding": enc}))
        dec = AudioDecoder(enc, rate)
        as_model = np.concatenate([dec.feed(raw), dec.flush()])
        assert msgs[-1]["type"] == "end"
        assert finals_text(msgs) == reference_text(demo_repo, as_model).replace(" ", "")


def test_flush_forces_an_endpoint(gateway):
    audio = demo_speech(np.random.default_rng(13), 4.0)
    data = pcm16(audio).tobytes()
    msgs = asyncio.run(stream_ws(gateway.ws_url, DEMO_KEYS["base"], data, flush_at=len(data) // 2))
    finals = [m for m in msgs if m["type"] == "final"]
    assert len(finals) >= 2 and [f["utterance_id"] for f in finals] == sorted({f["utterance_id"] for f in finals})


def test_wrong_key_is_refused_before_any_audio(gateway):
    async def attempt(headers):
        async with connect(gateway.ws_url, additional_headers=headers):
            pass

    for headers in ({"Authorization": "Bearer nope"}, {}):
        with pytest.raises(InvalidStatus) as e:
            asyncio.run(attempt(headers))
        assert e.value.response.status_code == 401


def test_bad_input_gets_clear_errors_and_others_go_on(gateway, demo_repo):
    async def first_reply(message, key=DEMO_KEYS["base"]):
        async with connect(gateway.ws_url, additional_headers={"Authorization": f"Bearer {key}"},
                           max_size=None) as ws:
            await ws.send(message)
            reply = json.loads(await ws.recv())
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 10)
            return reply, ws.close_code

    cases = [
        ("{not json", "bad_request", "not valid JSON"),
        (json.dumps({"type": "config", "sample_rate": 11025}), "bad_request", "sample_rate"),
        (json.dumps({"type": "config", "encoding": "opus"}), "bad_request", "encoding"),
        (json.dumps({"type": "config", "bogus": 1}), "bad_request", "unknown config field"),
        (b"\x00\x01garbage", "bad_request", "first message"),
    ]
    for message, code, text in cases:
        reply, close = asyncio.run(first_reply(message))
        assert reply["type"] == "error" and reply["code"] == code and text in reply["message"], reply
        assert close == 1008

    async def oversized():
        async with connect(gateway.ws_url, additional_headers={"Authorization": f"Bearer {DEMO_KEYS['base']}"},
                           max_size=None) as ws:
            await ws.send(json.dumps({"type": "config"}))
            await ws.recv()
            await ws.send(b"\x00" * (2 << 20))
            with pytest.raises(ConnectionClosed):
                while True:
                    await asyncio.wait_for(ws.recv(), 10)
            return ws.close_code

    assert asyncio.run(oversized()) == 1009

    async def unknown_control():
        async with connect(gateway.ws_url, additional_headers={"Authorization": f"Bearer {DEMO_KEYS['base']}"}) as ws:
            await ws.send(json.dumps({"type": "config"}))
            await ws.recv()
            await ws.send(json.dumps({"type": "rewind"}))
            return json.loads(await ws.recv())

    assert asyncio.run(unknown_control())["message"].startswith("unknown control")

    # A client that vanishes mid-stream: its stream is cleaned up, the next one works.
    async def vanish():
        ws = await connect(gateway.ws_url, additional_headers={"Authorization": f"Bearer {DEMO_KEYS['base']}"})
        await ws.send(json.dumps({"type": "config"}))
        await ws.recv()
        await ws.send(pcm16(demo_speech(np.random.default_rng(14), 1.5)).tobytes())
        ws.transport.abort()

    asyncio.run(vanish())
    audio = demo_speech(np.random.default_rng(15), 2.0)
    msgs = asyncio.run(stream_ws(gateway.ws_url, DEMO_KEYS["scot"], pcm16(audio).tobytes()))
    assert finals_text(msgs) == reference_text(demo_repo, pcm16(audio).astype(np.float32) / 32768, "scot").replace(" ", "")
    time.sleep(1)
    import urllib.request

    metrics = urllib.request.urlopen(f"http://127.0.0.1:{gateway.http_port}/metrics").read().decode()
    live = [line for line in metrics.splitlines() if line.startswith("brogue_active_streams{")]
    assert live and all(line.endswith(" 0.0") for line in live), live
    assert 'brogue_errors_total{api="ws",kind="bad_request"}' in metrics


def test_over_limit_stream_is_refused(demo_repo, triton_server, tmp_path):
    from conftest import write_tenants

    write_tenants(tmp_path / "tenants.toml", demo_repo.refs, max_streams=2)
    gw = start_gateway(demo_repo, triton_server.grpc_url, tmp_path)
    try:
        async def run():
            conns = []
            for _ in range(2):
                ws = await connect(gw.ws_url, additional_headers={"Authorization": f"Bearer {DEMO_KEYS['base']}"})
                await ws.send(json.dumps({"type": "config"}))
                await ws.recv()
                await ws.send(b"\x00\x00" * 16000)
                conns.append(ws)
            msgs = await stream_ws(gw.ws_url, DEMO_KEYS["base"], b"\x00\x00" * 16000)
            for ws in conns:
                await ws.close()
            return msgs

        msgs = asyncio.run(run())
        errors = [m for m in msgs if m["type"] == "error"]
        assert errors and errors[0]["code"] == "limit" and "limit" in errors[0]["message"]
    finally:
        stop_gateway(gw)


def test_triton_restart_mid_stream(demo_repo, tmp_path):
    """Streams on a Triton that crashes get a clean error; the gateway recovers without a restart."""
    from brogue.server.tritonserver import TritonProcess

    triton = TritonProcess(demo_repo.root, models=("asr_streaming",)).start(timeout=240)
    gw = start_gateway(demo_repo, triton.grpc_url, tmp_path)
    grpc_port = triton.grpc_port
    try:
        audio = pcm16(demo_speech(np.random.default_rng(16), 6.0)).tobytes()

        async def during_restart():
            task = asyncio.create_task(stream_ws(gw.ws_url, DEMO_KEYS["base"], audio, pace=0.1))
            await asyncio.sleep(1.5)
            os.kill(triton.pid, signal.SIGKILL)  # a crash, not a graceful shutdown
            result = await task
            await asyncio.to_thread(triton.stop)  # reap the stubs, clean /dev/shm
            return result

        msgs = asyncio.run(during_restart())
        errors = [m for m in msgs if m["type"] == "error"]
        assert errors and errors[0]["code"] == "unavailable", msgs[-3:]
        triton = TritonProcess(demo_repo.root, models=("asr_streaming",), grpc_port=grpc_port).start(timeout=240)
        time.sleep(2.5)  # the pool retries an instance marked down after 2 s
        x = demo_speech(np.random.default_rng(17), 2.0)
        msgs = asyncio.run(stream_ws(gw.ws_url, DEMO_KEYS["base"], pcm16(x).tobytes()))
        assert msgs[-1]["type"] == "end"
        assert finals_text(msgs) == reference_text(demo_repo, pcm16(x).astype(np.float32) / 32768).replace(" ", "")
        assert gw.process.poll() is None
    finally:
        stop_gateway(gw)
        triton.stop()


def test_brogue_mic_streams_a_file_like_a_microphone(gateway, demo_repo, tmp_path):
    import io

    import soundfile as sf

    from brogue.clients.mic import run_mic

    audio = demo_speech(np.random.default_rng(18), 2.0)
    sf.write(tmp_path / "a.wav", pcm16(audio), 16000, subtype="PCM_16")
    out = io.StringIO()
    finals = run_mic(gateway.ws_url, DEMO_KEYS["scot"], file=tmp_path / "a.wav", out=out)
    text = "".join(f["transcript"] for f in finals).replace(" ", "")
    assert text == reference_text(demo_repo, pcm16(audio).astype(np.float32) / 32768, "scot").replace(" ", "")
    assert f"adapter {demo_repo.refs['scot']}" in out.getvalue() and "…" in out.getvalue()
