"""The Riva-compatible gRPC API end to end: a real tritonserver, `brogue serve` as a subprocess, and the
unmodified ``nvidia-riva-client`` package as the client.

Transcripts of the demo model are compared with the in-process reference runner
(:class:`StreamingRunner`) on the same samples the gateway decodes.
"""

from __future__ import annotations

import audioop  # deprecated, but the reference G.711 encoder on Python 3.11
import re
import subprocess
import sys
import urllib.request
import wave

import grpc
import numpy as np
import pytest
import riva.client
import riva.client.proto.riva_asr_pb2 as rasr
from conftest import DEMO_KEYS, reference_text, demo_speech
from grpc_health.v1 import health_pb2, health_pb2_grpc

from brogue.audio.codecs import AudioDecoder
from brogue.engine.runner import StreamingRunner

pytestmark = pytest.mark.nemo




def write_wav(path, audio, rate=16000, channels=1):
    pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.repeat(pcm, channels).tobytes())
    return pcm.astype(np.float32) / 32768  # what the gateway decodes


def asr(gateway, key):
    auth = riva.client.Auth(uri=gateway.grpc_url, metadata_args=[["x-api-key", key]] if key else None)
    return riva.client.ASRService(auth)


def squash(text):
    return re.sub(r"\s+", "", text)


@pytest.fixture(scope="module")
def speech(tmp_path_factory, demo_repo):
    """A 5 s 16 kHz PCM16 WAV and its reference transcript through tenant scot's adapter."""
    rng = np.random.default_rng(21)
    audio = np.concatenate([demo_speech(rng, 2.0), np.zeros(16000, np.float32), demo_speech(rng, 2.0)])
    path = tmp_path_factory.mktemp("riva") / "speech.wav"
    x = write_wav(path, audio)
    want = reference_text(demo_repo, x, "scot")
    assert want, "the reference transcript is empty: the test would prove nothing"
    return path, want, len(audio) / 16000


def streaming_config(wav=None, **kw):
    config = riva.client.RecognitionConfig(encoding=riva.client.AudioEncoding.LINEAR_PCM, language_code="en-US",
                                           max_alternatives=1, enable_word_time_offsets=True, **kw)
    if wav is not None:
        riva.client.add_audio_file_specs_to_config(config, wav)
    return config


def test_streaming_a_wav_file_with_the_unmodified_client(gateway, speech):
    path, want, seconds = speech
    config = streaming_config(path)
    riva.client.add_endpoint_parameters_to_config(config, 240, 0.2, 800, 400, 0.98, 0.98)
    sc = riva.client.StreamingRecognitionConfig(config=config, interim_results=True)
    # Exactly what riva's transcribe_file example does: raw file chunks, WAV header included.
    with riva.client.AudioChunkFileIterator(path, 1600) as chunks:
        responses = list(asr(gateway, DEMO_KEYS["scot"]).streaming_response_generator(chunks, sc))
    results = [r for resp in responses for r in resp.results]
    finals = [r for r in results if r.is_final]
    partials = [r for r in results if not r.is_final]
    assert finals and partials, (len(finals), len(partials))
    assert results.index(partials[0]) < results.index(finals[-1])
    assert {round(p.stability, 3) for p in partials} <= {0.1, 0.9}
    text = "".join(r.alternatives[0].transcript for r in finals)
    assert all(r.alternatives[0].transcript.endswith(" ") for r in finals)
    assert squash(text) == squash(want)
    processed = [r.audio_processed for r in results]
    assert processed == sorted(processed) and 0 < processed[-1] <= seconds + 1e-3
    last_end = 0
    for r in finals:
        alt = r.alternatives[0]
        assert len(r.alternatives) == 1 and r.channel_tag == 0 and 0 < alt.confidence <= 1
        assert " ".join(w.word for w in alt.words) == " ".join(alt.transcript.split())
        for w in alt.words:
            assert last_end - 1 <= w.start_time < w.end_time <= seconds * 1000 + 700, (w.start_time, w.end_time)
            assert 0 < w.confidence <= 1
            last_end = w.end_time


def test_recognize_on_the_whole_file_gives_the_same_transcript(gateway, speech):
    path, want, seconds = speech
    config = streaming_config(path)
    config.max_alternatives = 3  # clamped to 1, as documented
    resp = asr(gateway, DEMO_KEYS["scot"]).offline_recognize(path.read_bytes(), config)
    assert resp.results and all(len(r.alternatives) == 1 for r in resp.results)
    assert squash("".join(r.alternatives[0].transcript for r in resp.results)) == squash(want)
    starts = [w.start_time for r in resp.results for w in r.alternatives[0].words]
    assert starts == sorted(starts) and starts[-1] < seconds * 1000
    # Raw PCM (no header) with the rate in the config gives the same.
    with wave.open(str(path)) as w:
        raw = w.readframes(w.getnframes())
    resp = asr(gateway, DEMO_KEYS["scot"]).offline_recognize(raw, streaming_config(sample_rate_hertz=16000))
    assert squash("".join(r.alternatives[0].transcript for r in resp.results)) == squash(want)


def test_8khz_mulaw(gateway, demo_repo):
    rng = np.random.default_rng(22)
    x = demo_speech(rng, 1.5)  # 3 s at 8 kHz
    raw = audioop.lin2ulaw((x * 32767).astype("<i2").tobytes(), 2)
    dec = AudioDecoder("mulaw", 8000)
    want = reference_text(demo_repo, np.concatenate([dec.feed(raw), dec.flush()]))
    assert want
    config = riva.client.RecognitionConfig(encoding=riva.client.AudioEncoding.MULAW, sample_rate_hertz=8000,
                                           language_code="en-US", max_alternatives=1)
    sc = riva.client.StreamingRecognitionConfig(config=config, interim_results=False)
    chunks = [raw[i:i + 800] for i in range(0, len(raw), 800)]
    responses = list(asr(gateway, DEMO_KEYS["base"]).streaming_response_generator(chunks, sc))
    results = [r for resp in responses for r in resp.results]
    assert results and all(r.is_final for r in results)
    assert squash("".join(r.alternatives[0].transcript for r in results)) == squash(want)
    assert abs(results[-1].audio_processed - 3.0) < 1e-3


def _code(call):
    with pytest.raises(grpc.RpcError) as e:
        call()
    return e.value.code(), e.value.details()


def test_refusals_have_clear_status_codes(gateway, speech, tmp_path):
    path, want, _ = speech
    data = path.read_bytes()

    def stream(key, config, chunks=(b"\0\0" * 1600,)):
        sc = riva.client.StreamingRecognitionConfig(config=config, interim_results=True)
        return lambda: list(asr(gateway, key).streaming_response_generator(iter(chunks), sc))

    def recognize(key, config, audio=data):
        return lambda: asr(gateway, key).offline_recognize(audio, config)

    unauth = grpc.StatusCode.UNAUTHENTICATED
    for key in ("wrong-key", None):
        assert _code(stream(key, streaming_config(path)))[0] == unauth
        assert _code(recognize(key, streaming_config(path)))[0] == unauth
    # the key as a bearer token picks its tenant (and adapter) as x-api-key does
    bearer = riva.client.ASRService(riva.client.Auth(uri=gateway.grpc_url,
                                                     metadata_args=[["authorization", f"Bearer {DEMO_KEYS['scot']}"]]))
    resp = bearer.offline_recognize(data, streaming_config(path))
    assert squash("".join(r.alternatives[0].transcript for r in resp.results)) == squash(want)

    bad = grpc.StatusCode.INVALID_ARGUMENT
    flac = streaming_config(sample_rate_hertz=16000)
    flac.encoding = riva.client.AudioEncoding.FLAC
    code, msg = _code(stream(DEMO_KEYS["base"], flac))
    assert code == bad and "FLAC" in msg
    code, msg = _code(recognize(DEMO_KEYS["base"], flac, b"\0" * 3200))
    assert code == bad and "FLAC" in msg
    code, msg = _code(recognize(DEMO_KEYS["base"], streaming_config(model="no-such-latency")))
    assert code == bad and "no-such-latency" in msg
    code, msg = _code(recognize(DEMO_KEYS["base"], streaming_config(sample_rate_hertz=11025), b"\0" * 3200))
    assert code == bad and "11025" in msg
    code, msg = _code(recognize(DEMO_KEYS["base"], streaming_config(), b"\0" * 3200))
    assert code == bad and "sample_rate_hertz is required" in msg
    german = streaming_config(path)
    german.language_code = "de-DE"
    code, msg = _code(recognize(DEMO_KEYS["base"], german))
    assert code == bad and "de-DE" in msg
    diar = streaming_config(path)
    riva.client.add_speaker_diarization_to_config(diar, True, 2)
    assert _code(recognize(DEMO_KEYS["base"], diar))[0] == bad
    stereo = tmp_path / "stereo.wav"
    write_wav(stereo, demo_speech(np.random.default_rng(1), 0.5), channels=2)
    code, msg = _code(recognize(DEMO_KEYS["base"], streaming_config(sample_rate_hertz=16000), stereo.read_bytes()))
    assert code == bad and "channels" in msg
    code, msg = _code(stream(DEMO_KEYS["base"], streaming_config(sample_rate_hertz=16000), [b"RIFF" + b"\0" * 60]))
    assert code == bad and "WAV" in msg

    metrics = urllib.request.urlopen(f"http://127.0.0.1:{gateway.http_port}/metrics", timeout=5).read().decode()
    for kind in ("unauthenticated", "bad_request", "bad_audio"):
        assert re.search(rf'brogue_errors_total\{{(?=[^}}]*api="riva")(?=[^}}]*kind="{kind}")[^}}]*\}} [1-9]',
                         metrics), kind


def test_health_and_model_config(gateway, demo_repo):
    with grpc.insecure_channel(gateway.grpc_url) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        for service in ("", "nvidia.riva.asr.RivaSpeechRecognition"):
            resp = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert resp.status == health_pb2.HealthCheckResponse.SERVING
    service = asr(gateway, DEMO_KEYS["base"])
    resp = service.stub.GetRivaSpeechRecognitionConfig(rasr.RivaSpeechRecognitionConfigRequest(),
                                                       metadata=service.auth.get_auth_metadata())
    (model,) = resp.model_config
    # No key is needed for the model list (riva's --list-models sends none); a wrong one is refused.
    assert service.stub.GetRivaSpeechRecognitionConfig(rasr.RivaSpeechRecognitionConfigRequest()) == resp
    assert _code(lambda: service.stub.GetRivaSpeechRecognitionConfig(
        rasr.RivaSpeechRecognitionConfigRequest(), metadata=[("x-api-key", "wrong")]))[0] == \
        grpc.StatusCode.UNAUTHENTICATED
    lats = model.parameters["latencies"].split(",")
    assert lats and model.parameters["language_code"] == "en-US" and model.parameters["sample_rate"] == "16000"
    assert model.parameters["default_latency"] in lats
    # Each latency name selects that latency.
    x = demo_speech(np.random.default_rng(23), 1.0)
    pcm = (x * 32767).astype("<i2")
    for lat in lats:
        runner = StreamingRunner(demo_repo.model_dir, slots=1, decoder="greedy")  # as the served model
        (st,) = runner.transcribe([pcm.astype(np.float32) / 32768], latency=lat)
        got = service.offline_recognize(pcm.tobytes(), streaming_config(sample_rate_hertz=16000, model=lat))
        assert squash("".join(r.alternatives[0].transcript for r in got.results)) == \
            squash(runner.detok.decode(st.tokens)), lat


def test_brogue_transcribe_three_files(gateway, demo_repo, tmp_path):
    rng = np.random.default_rng(24)
    files, wants = [], []
    for i in range(3):
        f = tmp_path / f"call{i}.wav"
        wants.append(reference_text(demo_repo, write_wav(f, demo_speech(rng, 1.5 + i)), "carib"))
        files.append(f)
    for fmt, stream in (("text", False), ("srt", True)):
        out = tmp_path / fmt
        cmd = [sys.executable, "-m", "brogue.cli", "transcribe", *map(str, files), "--server", gateway.grpc_url,
               "--api-key", DEMO_KEYS["carib"], "--format", fmt, "--concurrency", "3", "--out", str(out),
               *(["--stream"] if stream else [])]
        r = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        for f, want in zip(files, wants):
            text = (out / (f.stem + (".txt" if fmt == "text" else ".srt"))).read_text()
            if fmt == "text":
                assert squash(text) == squash(want)
                continue
            cues = re.findall(r"(\d+)\n(\d\d):(\d\d):(\d\d),(\d{3}) --> (\d\d):(\d\d):(\d\d),(\d{3})\n(.*)\n", text)
            assert cues, text
            assert squash("".join(c[-1] for c in cues)) == squash(want)
            ms = lambda h, m, s, f: ((int(h) * 60 + int(m)) * 60 + int(s)) * 1000 + int(f)
            spans = [(ms(*c[1:5]), ms(*c[5:9])) for c in cues]
            assert [int(c[0]) for c in cues] == list(range(1, len(cues) + 1))
            assert all(a < b for a, b in spans) and [a for a, _ in spans] == sorted(a for a, _ in spans)
    r = subprocess.run([sys.executable, "-m", "brogue.cli", "transcribe", str(files[0]), "--server", gateway.grpc_url,
                        "--api-key", "wrong"], check=False, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "UNAUTHENTICATED" in r.stderr


def test_over_limit_is_resource_exhausted_and_vanished_clients_free_their_streams(gateway):
    import asyncio

    import riva.client.proto.riva_asr_pb2_grpc as rasr_grpc

    key = [("x-api-key", DEMO_KEYS["base"])]  # the fixture's tenants allow 4 streams each
    config = rasr.StreamingRecognitionConfig(config=streaming_config(sample_rate_hertz=16000), interim_results=True)
    audio = (demo_speech(np.random.default_rng(25), 1.0) * 32767).astype("<i2").tobytes()
    long = (demo_speech(np.random.default_rng(26), 6.0) * 32767).astype("<i2").tobytes()

    def active():
        text = urllib.request.urlopen(f"http://127.0.0.1:{gateway.http_port}/metrics", timeout=5).read().decode()
        return sum(float(v) for v in re.findall(r'brogue_active_streams\{[^}]*api="riva"[^}]*\} (\S+)', text))

    def triton_live():
        text = urllib.request.urlopen(gateway.triton.metrics_url, timeout=5).read().decode()
        return sum(float(v) for v in re.findall(r"^brogue_asr_live_sequences(?:\{[^}]*\})? (\S+)", text, re.M))

    async def settle(want, seconds=20.0):
        for _ in range(int(seconds * 10)):
            if (n := active()) == want:
                break
            await asyncio.sleep(0.1)
        return n

    async def main():
        async with grpc.aio.insecure_channel(gateway.grpc_url) as ch:
            stub = rasr_grpc.RivaSpeechRecognitionStub(ch)
            hold = asyncio.Event()

            async def held():  # config, 6 s of audio, then nothing until `hold` is set
                yield rasr.StreamingRecognizeRequest(streaming_config=config)
                yield rasr.StreamingRecognizeRequest(audio_content=long)
                await hold.wait()

            calls = [stub.StreamingRecognize(held(), metadata=key) for _ in range(4)]
            for c in calls:  # each has its stream open once its first partial is back
                first = await c.read()
                assert first is not grpc.aio.EOF and first.results, (await c.code(), await c.details())
            assert await settle(4) == 4, gateway.log()[-3000:]
            async def config_only():  # refused before any audio is read
                yield rasr.StreamingRecognizeRequest(streaming_config=config)
                await hold.wait()

            with pytest.raises(grpc.aio.AioRpcError) as e:
                async for _ in stub.StreamingRecognize(config_only(), metadata=key):
                    pass
            assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "base" in e.value.details(), e.value
            for c in calls:  # the clients vanish mid-stream (while the gateway is still busy with their audio)
                c.cancel()
            assert await settle(0) == 0, gateway.log()[-3000:]
            # ... and Triton frees their sequences now (an END on a call of its own), not at its idle sweep
            for _ in range(50):
                if (live := triton_live()) == 0:
                    break
                await asyncio.sleep(0.1)
            assert live == 0, f"Triton still holds {live} sequences of vanished clients"
            hold.set()

            async def whole():
                yield rasr.StreamingRecognizeRequest(streaming_config=config)
                yield rasr.StreamingRecognizeRequest(audio_content=audio)

            try:  # the gateway goes on serving: the vanished clients did not take Triton down with them
                finals = [r for resp in [x async for x in stub.StreamingRecognize(whole(), metadata=key)]
                          for r in resp.results if r.is_final]
            except grpc.aio.AioRpcError as e:
                marks = [ln for ln in gateway.log().splitlines() if "marked down" in ln]
                pytest.fail(f"a new stream after clients vanished mid-stream failed: {e.code().name}: "
                            f"{e.details()}\n" + "\n".join(marks[-4:]))
            assert finals

    asyncio.run(main())
