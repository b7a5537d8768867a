"""Reliability: fuzzing of every input surface, no leaks after vanishing clients, and the fault
scripts of ``brogue faults`` run short against a real tritonserver and a real gateway.

The long versions (30-minute soak, full-length faults, benchmarks) run by their own commands
(docs/performance.md); these are the fast checks of the same behaviours.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request

import grpc
import numpy as np
import pytest
import riva.client.proto.riva_asr_pb2 as rasr
import riva.client.proto.riva_asr_pb2_grpc as rasr_grpc
import riva.client.proto.riva_audio_pb2 as raudio
from conftest import DEMO_KEYS, DEMO_REPO, TEST_EXIT_TIMEOUT, demo_speech
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from brogue.audio.codecs import ENCODINGS, SAMPLE_RATES, AudioDecoder, AudioFormatError
from brogue.server.websocket import parse_config

pytestmark = pytest.mark.nemo

ERROR_CODES = {"unauthenticated", "limit", "bad_request", "bad_audio", "adapter", "unavailable", "internal", "idle",
               "slow_client"}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**63) | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12)
config_like = st.fixed_dictionaries({"type": st.sampled_from(["config", "Config", "flush", ""])}, optional={
    "sample_rate": st.sampled_from(SAMPLE_RATES) | st.integers(-10, 10**9) | st.text(max_size=5) | st.booleans(),
    "encoding": st.sampled_from(ENCODINGS) | st.text(max_size=8) | st.integers(),
    "interim_results": st.booleans() | st.integers() | st.none(),
    "endpointing": st.dictionaries(st.sampled_from(["stop_history_ms", "start_threshold", "stop_threshold",
                                                    "stop_history_eou_ms", "bogus"]),
                                   st.integers(-5, 10**7) | st.floats(allow_nan=True) | st.text(max_size=3),
                                   max_size=3) | json_values,
    "latency": st.none() | st.text(max_size=8) | st.integers(),
    "extra": json_values,
})


# -- parsers and decoders, no server -------------------------------------------------------------

@settings(max_examples=400, deadline=None)
@given(msg=config_like | json_values | st.binary(max_size=64))
def test_fuzz_config_parser_gives_a_config_or_a_clear_value_error(msg):
    text = msg if isinstance(msg, bytes) else json.dumps(msg)
    try:
        cfg = parse_config(text)
    except ValueError as e:
        assert str(e)
        return
    assert cfg.sample_rate in SAMPLE_RATES and cfg.encoding in ENCODINGS


@settings(max_examples=300, deadline=None)
@given(encoding=st.sampled_from(ENCODINGS) | st.text(max_size=6), rate=st.sampled_from(SAMPLE_RATES) | st.integers(-1, 10**6),
       parts=st.lists(st.binary(max_size=700), max_size=8))
def test_fuzz_audio_decoding_gives_samples_or_a_clear_audio_format_error(encoding, rate, parts):
    try:
        dec = AudioDecoder(encoding, rate)
        out = [dec.feed(p) for p in parts] + [dec.flush()]
    except AudioFormatError as e:
        assert str(e)
        return
    x = np.concatenate(out)
    assert x.dtype == np.float32 and np.all(np.isfinite(x))


# -- the live gateway ----------------------------------------------------------------------------

def healthy(gateway) -> bool:
    return urllib.request.urlopen(f"http://127.0.0.1:{gateway.http_port}/healthz", timeout=5).status == 200


ws_messages = st.lists(
    config_like.map(json.dumps) | json_values.map(json.dumps) | st.text(max_size=40) | st.binary(max_size=4000)
    | st.sampled_from(['{"type": "flush"}', '{"type": "close"}', '{"type": "config"}']),
    min_size=1, max_size=6)


@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
@given(messages=ws_messages, key=st.sampled_from([DEMO_KEYS["base"], DEMO_KEYS["scot"], "wrong-key"]))
def test_fuzz_websocket_sessions_end_cleanly_and_the_gateway_stays_up(gateway, messages, key):
    """Random message sequences: every connection ends within its timeout (ready/partial/final/end
    or one error with a known code, never a hang), and the gateway serves the next one."""

    async def run():
        seen = []
        try:
            async with asyncio.timeout(20):
                async with connect(gateway.ws_url, additional_headers={"Authorization": f"Bearer {key}"}) as ws:
                    for m in messages:
                        await ws.send(m)
                    await ws.send('{"type": "close"}')
                    async for raw in ws:
                        seen.append(json.loads(raw))
        except ConnectionClosed:
            pass
        except Exception as e:  # the handshake refusal of a wrong key
            assert key == "wrong-key" and "401" in str(e), e
        return seen

    seen = asyncio.run(run())
    kinds = [m["type"] for m in seen]
    assert set(kinds) <= {"ready", "partial", "final", "end", "error"}
    errors = [m for m in seen if m["type"] == "error"]
    assert len(errors) <= 1 and all(e["code"] in ERROR_CODES and e["message"] for e in errors)
    if "end" in kinds:
        assert not errors
    assert healthy(gateway)


riva_configs = st.builds(
    dict,
    encoding=st.sampled_from([raudio.LINEAR_PCM, raudio.MULAW, raudio.ALAW, raudio.FLAC, raudio.OGGOPUS, 0, 99]),
    sample_rate_hertz=st.sampled_from([0, 8000, 16000, 44100, 48000, 11025, -1, 2**31 - 1]),
    audio_channel_count=st.sampled_from([0, 1, 2, 64]),
    language_code=st.sampled_from(["", "en-US", "de-DE", "x" * 300]),
    max_alternatives=st.integers(-3, 1000),
    model=st.sampled_from(["", "nope", "x" * 1000]),
    enable_word_time_offsets=st.booleans(),
)


@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
@given(cfg=riva_configs, interim=st.booleans(), audio=st.binary(max_size=9000), head=st.sampled_from([b"", b"RIFF"]),
       key=st.sampled_from([DEMO_KEYS["base"], "nope"]), config_first=st.booleans())
def test_fuzz_riva_requests_get_a_status_never_a_crash(gateway, cfg, interim, audio, head, key, config_first):
    """Random configs, truncated or odd audio, a WAV-looking header, wrong keys, audio before the
    config: each call ends with OK or a specific status code (never UNKNOWN, INTERNAL or a hang)."""
    sc = rasr.StreamingRecognitionConfig(config=rasr.RecognitionConfig(**cfg), interim_results=interim)
    reqs = [rasr.StreamingRecognizeRequest(streaming_config=sc)]
    reqs += [rasr.StreamingRecognizeRequest(audio_content=head + audio[i:i + 3000]) if i == 0 else
             rasr.StreamingRecognizeRequest(audio_content=audio[i:i + 3000]) for i in range(0, len(audio), 3000)]
    if not config_first:
        reqs.reverse()
    with grpc.insecure_channel(gateway.grpc_url) as ch:
        stub = rasr_grpc.RivaSpeechRecognitionStub(ch)
        try:
            for _ in stub.StreamingRecognize(iter(reqs), metadata=[("x-api-key", key)], timeout=20):
                pass
            code = grpc.StatusCode.OK
        except grpc.RpcError as e:
            code = e.code()
            assert e.details(), code
    assert code in {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.UNAUTHENTICATED,
                    grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.RESOURCE_EXHAUSTED}, code
    assert healthy(gateway)


def _metric(url: str, name: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(url, timeout=5).read().decode()
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == name)


def test_vanishing_clients_leave_no_stream_and_no_triton_sequence(gateway):
    """Six streams, three of whose clients drop their TCP connection mid-stream: afterwards the
    gateway counts no live stream and Triton's asr_streaming holds no sequence state."""
    audio = (demo_speech(np.random.default_rng(5), 3.0) * 32767).astype("<i2").tobytes()

    async def one(vanish: bool, key: str):
        async with connect(gateway.ws_url, additional_headers={"Authorization": f"Bearer {key}"}) as ws:
            await ws.send('{"type": "config"}')
            await ws.recv()
            for i in range(0, len(audio), 3200):
                await ws.send(audio[i:i + 3200])
                await asyncio.sleep(0.02)
                if vanish and i > len(audio) // 2:
                    ws.transport.abort()  # no close frame, no FIN handshake: the client is just gone
                    return "vanished"
            await ws.send('{"type": "close"}')
            return [json.loads(m)["type"] async for m in ws][-1]

    async def run():
        keys = list(DEMO_KEYS.values())  # two streams per tenant: within each tenant's limit
        return await asyncio.gather(*(one(i % 2 == 0, keys[i % len(keys)]) for i in range(6)))

    assert asyncio.run(run()) == ["vanished", "end"] * 3
    gw_metrics = f"http://127.0.0.1:{gateway.http_port}/metrics"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        live = _metric(gw_metrics, "brogue_active_streams"), _metric(gateway.triton.metrics_url, "brogue_asr_live_sequences")
        if live == (0, 0):
            break
        time.sleep(0.5)
    assert live == (0, 0), f"gateway streams, Triton sequences still live: {live}"
    assert healthy(gateway)


def test_gateway_sigterm_drains_live_streams_finals_first_then_1001(demo_repo, triton_server, tmp_path):
    """SIGTERM mid-stream: each live WebSocket stream gets the finals for all audio it sent, then
    ``end`` and close 1001; each Riva stream gets its final results and status OK; Triton holds no
    sequence afterwards; and the gateway exits 0 within its drain time."""
    import signal

    from conftest import start_gateway

    gw = start_gateway(demo_repo, triton_server.grpc_url, tmp_path)
    audio = (np.clip(demo_speech(np.random.default_rng(41), 30.0), -1, 1) * 32767).astype("<i2").tobytes()
    sent_ws = asyncio.Event()

    async def ws_stream():
        async with connect(gw.ws_url, additional_headers={"Authorization": f"Bearer {DEMO_KEYS['base']}"}) as ws:
            await ws.send(json.dumps({"type": "config"}))
            assert json.loads(await ws.recv())["type"] == "ready"
            msgs = []

            async def read():
                async for m in ws:
                    msgs.append(json.loads(m))

            reader = asyncio.create_task(read())
            for i in range(0, len(audio), 3200):  # real time, until the server ends the stream
                try:
                    await ws.send(audio[i:i + 3200])
                except ConnectionClosed:
                    break
                if i == 3200 * 15:
                    sent_ws.set()
                await asyncio.sleep(0.1)
            await reader
            return msgs, ws.close_code

    def riva_stream():
        def requests():
            yield rasr.StreamingRecognizeRequest(streaming_config=rasr.StreamingRecognitionConfig(
                config=rasr.RecognitionConfig(encoding=raudio.AudioEncoding.LINEAR_PCM, sample_rate_hertz=16000,
                                              language_code="en-US"), interim_results=True))
            for i in range(0, len(audio), 3200):
                yield rasr.StreamingRecognizeRequest(audio_content=audio[i:i + 3200])
                time.sleep(0.1)

        with grpc.insecure_channel(gw.grpc_url) as ch:
            stub = rasr_grpc.RivaSpeechRecognitionStub(ch)
            call = stub.StreamingRecognize(requests(), metadata=[("x-api-key", DEMO_KEYS["scot"])])
            results = [r for resp in call for r in resp.results]
            return results, call.code()

    async def run():
        riva = asyncio.create_task(asyncio.to_thread(riva_stream))
        ws = asyncio.create_task(ws_stream())
        await sent_ws.wait()
        t0 = time.monotonic()
        gw.process.send_signal(signal.SIGTERM)
        return await ws, await riva, t0

    try:
        (msgs, close_code), (riva_results, riva_code), t0 = asyncio.run(run())
        exit_code = gw.process.wait(15)
        took = time.monotonic() - t0
    finally:
        if gw.process.poll() is None:
            gw.process.kill()
    kinds = [m["type"] for m in msgs]
    assert "error" not in kinds and kinds[-1] == "end" and "final" in kinds, kinds[-5:]
    assert close_code == 1001, close_code
    assert riva_code == grpc.StatusCode.OK and any(r.is_final for r in riva_results), riva_code
    assert exit_code == 0 and took < 10, (exit_code, took)
    deadline = time.monotonic() + 5
    while (live := _metric(triton_server.metrics_url, "brogue_asr_live_sequences")) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert live == 0, f"Triton still holds {live} sequences after the drain"


# -- the fault scripts, short ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    from brogue.bench.stack import Stack

    # The committed repository (its own copy: other tests publish broken adapters into demo_repo's
    # store, and the stack's tenants take the newest entries). Short keepalive and send timeout: the
    # slow client is dropped in seconds, not the default 40.
    s = Stack(DEMO_REPO, tmp_path_factory.mktemp("stack"), model="demo", adapters=4, decoder="greedy",
              gateway_args=("--keepalive-seconds", "5", "--send-timeout", "3"),
              triton_exit_timeout=TEST_EXIT_TIMEOUT)
    with s:
        yield s


@pytest.fixture(scope="module")
def clips():
    from brogue.bench.load import Clip

    rng = np.random.default_rng(9)
    return [Clip(f"c{i}", (demo_speech(rng, 1.5 + i * 0.5) * 32767).astype("<i2").tobytes(), "") for i in range(4)]


def test_triton_killed_mid_load_clean_errors_then_recovery(stack, clips):
    from brogue.bench.faults import triton_restart

    r = triton_restart(stack, clips, n=4, warm_s=4, after_s=8)
    assert r["ok"], json.dumps(r)
    assert r["streams_hit"] >= 1 and set(r["hit_codes"]) <= {"unavailable", "UNAVAILABLE"}, json.dumps(r)


def test_gateway_restart_drains_streams_and_clients_reconnect(stack, clips):
    from brogue.bench.faults import gateway_restart

    r = gateway_restart(stack, clips, n=4, warm_s=3, after_s=5)
    assert r["ok"], json.dumps(r)
    assert r["riva_client"] == "completed" and r["abrupt_ends"] == 0, json.dumps(r)


def test_gateway_crash_riva_client_gets_a_clean_error_and_clients_reconnect(stack, clips):
    from brogue.bench.faults import gateway_crash

    r = gateway_crash(stack, clips, n=4, warm_s=3, after_s=5)
    assert r["ok"], json.dumps(r)
    assert r["riva_client"].startswith(("UNAVAILABLE", "CANCELLED")), json.dumps(r)


def test_adapter_published_and_assigned_every_few_seconds_under_load_drops_nothing(stack, clips):
    from brogue.bench.faults import adapter_publish

    r = adapter_publish(stack, clips, n=4, seconds=12, every=3)
    assert r["ok"] and r["errors"] == 0 and r["publishes"] >= 3 and r["target_tenant_streams"] > 0, json.dumps(r)


def test_a_client_that_never_reads_is_dropped_and_others_go_on(stack, clips):
    from brogue.bench.faults import slow_client

    r = slow_client(stack, clips, n=3, audio_s=900, timeout=120)
    assert r["ok"], json.dumps(r)
    # dropped by the stack's 3 s send timeout or 5 + 5 s keepalive, not the defaults (10 s; 20 + 20 s)
    assert r["slow"]["after_s"] < 30, json.dumps(r)
    # what it failed to read stays in bounded buffers: the gateway did not grow by it
    assert r["gateway_rss_mb"][1] - r["gateway_rss_mb"][0] < 30, json.dumps(r)
