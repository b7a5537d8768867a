"""The OpenAI-compatible API (docs/openai.md): unit tests of its formats and upload parser, then the
official ``openai`` client, unmodified, against a real tritonserver and `brogue serve` subprocess on
the committed demo model, on real speech, compared with the in-process greedy reference."""

from __future__ import annotations

import asyncio
import io
import json
import socket
import ssl
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest

from conftest import DEMO_KEYS, demo_speech, free_port, reference_text, start_gateway, stop_gateway

# -- unit: formats -----------------------------------------------------------------------------------


def _final(uid, text, start, end, words=()):
    from brogue.server.session import Result, Word

    return Result("final", uid, text, [Word(*w) for w in words], start, end)


def test_timestamps_round_to_the_millisecond_and_hours_grow():
    from brogue.server.openai.formats import timestamp

    assert timestamp(0) == "00:00:00,000"
    assert timestamp(1.2345) == "00:00:01,234" or timestamp(1.2345) == "00:00:01,235"
    assert timestamp(3661.5, ".") == "01:01:01.500"
    assert timestamp(59.9996) == "00:01:00,000"  # rounding carries into the minutes
    assert timestamp(360000.0) == "100:00:00,000"
    assert timestamp(-0.2) == "00:00:00,000"


def test_srt_and_vtt_cues_are_one_line_and_vtt_escapes():
    from brogue.server.openai.formats import segments_of, srt, vtt

    segs = segments_of([_final(0, "hello world", 0.32, 1.5), _final(1, "", 2.0, 2.1),
                        _final(2, "a <b> & c --> d\n\nx", 62.0, 63.25)])
    assert [s.id for s in segs] == [0, 1]  # the empty final is no segment
    assert srt(segs) == ("1\n00:00:00,320 --> 00:00:01,500\nhello world\n\n"
                         "2\n00:01:02,000 --> 00:01:03,250\na <b> & c -> d x\n")
    assert vtt(segs) == ("WEBVTT\n\n00:00:00.320 --> 00:00:01.500\nhello world\n\n"
                         "00:01:02.000 --> 00:01:03.250\na &lt;b&gt; &amp; c -&gt; d x\n")


def test_verbose_json_has_openais_shape_and_the_asked_granularities():
    from brogue.server.openai.formats import render, segments_of, verbose_json

    segs = segments_of([_final(0, "hello world", 0.3, 1.4, [("hello", 0.3, 0.7, 0.9), ("world", 0.8, 1.2, 0.5)]),
                        _final(1, "again", 2.0, 2.6, [("again", 2.0, 2.4, 1.0)])])
    v = verbose_json(segs, duration=3.0004, granularities=("segment",))
    assert v["task"] == "transcribe" and v["language"] == "english" and v["duration"] == 3.0
    assert v["text"] == "hello world again" and "words" not in v
    s0 = v["segments"][0]
    assert set(s0) == {"id", "seek", "start", "end", "text", "tokens", "temperature", "avg_logprob",
                       "compression_ratio", "no_speech_prob"}
    assert (s0["id"], s0["start"], s0["end"], s0["text"], s0["seek"]) == (0, 0.3, 1.4, "hello world", 30)
    assert s0["avg_logprob"] == pytest.approx((np.log(0.9) + np.log(0.5)) / 2, abs=1e-4)
    v = verbose_json(segs, duration=3.0, granularities=("word",))
    assert "segments" not in v and v["words"][1] == {"word": "world", "start": 0.8, "end": 1.2}
    v = verbose_json(segs, duration=3.0, granularities=("word", "segment"))
    assert len(v["segments"]) == 2 and len(v["words"]) == 3
    assert render("json", segs, duration=3.0) == ("application/json", b'{"text": "hello world again"}')
    assert render("text", segs, duration=3.0)[1] == b"hello world again\n"


def test_text_deltas_add_up_to_the_text_and_send_done_words_early():
    from brogue.server.openai.formats import TextDeltas
    from brogue.server.session import Result

    def partial(uid, text):
        return Result("partial", uid, text)

    events = [partial(0, "hel"), partial(0, "hello wor"), partial(0, "hello world and"), _final(0, "hello world and", 0, 1),
              partial(1, "so"), _final(1, "so on", 1, 2), _final(2, "", 2, 3), partial(3, "end of it"),
              _final(3, "end of it", 3, 4)]
    d = TextDeltas(early=True)
    deltas = [d.feed(e) for e in events]
    assert deltas == ["", "hello", " world", " and", "", " so on", "", " end of", " it"]
    assert "".join(deltas) == d.text == "hello world and so on end of it"
    d = TextDeltas(early=False)
    assert [x for x in (d.feed(e) for e in events) if x] == ["hello world and", " so on", " end of it"]


# -- unit: the upload ---------------------------------------------------------------------------------

BOUNDARY = "b0undary"


def multipart(fields: list[tuple[str, str]], file: bytes | None = b"RIFF....", name="file", copies=1) -> bytes:
    out = b""
    for k, v in fields:
        out += f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
    if file is not None:
        out += ((f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"; filename="a.wav"\r\n'
                 f"Content-Type: audio/wav\r\n\r\n").encode() + file + b"\r\n") * copies
    return out + f"--{BOUNDARY}--\r\n".encode()


def parse(body: bytes, piece: int = 7, **limits):
    from brogue.server.openai.upload import FormParser, UploadLimits

    p = FormParser(BOUNDARY.encode(), UploadLimits(**limits))
    for i in range(0, len(body), piece):
        p.feed(body[i:i + piece])
    return p.finish()


def test_a_form_is_parsed_in_pieces_and_the_file_spooled():
    audio = bytes(range(256)) * 40 + f"\r\n--{BOUNDARY}x".encode()  # a near-boundary inside the file
    with parse(multipart([("model", "base"), ("timestamp_granularities[]", "word"),
                          ("timestamp_granularities[]", "segment"), ("prompt", "é, b")], audio)) as form:
        assert form.get("model") == "base" and form.get("prompt") == "é, b"
        assert form.fields["timestamp_granularities[]"] == ["word", "segment"]
        assert form.filename == "a.wav" and form.file_bytes == len(audio) and form.file.read() == audio
        assert not hasattr(form.file, "getvalue")  # a real (temporary) file, not memory


def test_upload_limits_are_enforced_while_the_body_streams():
    from brogue.server.openai.errors import ApiError
    from brogue.server.openai.upload import FormParser, UploadLimits

    p = FormParser(BOUNDARY.encode(), UploadLimits(max_file_bytes=1000))
    head = multipart([("model", "base")], b"")[:-len(f"\r\n--{BOUNDARY}--\r\n")]
    p.feed(head)
    p.feed(b"x" * 1000)  # at the limit: fine
    with pytest.raises(ApiError) as e:
        p.feed(b"x")  # one byte more: refused now, before the body ends
    assert e.value.status == 413 and e.value.code == "too_large" and e.value.param == "file"
    assert p.form.file.closed
    cases = [
        (multipart([("prompt", "x" * 100)]), {"max_field_bytes": 50}, 400, "over 50 bytes"),
        (multipart([("a", "1")] * 5), {"max_fields": 4}, 400, "more than 4 form fields"),
        (multipart([("model", "base")], b"1", copies=2), {}, 400, "more than one 'file' part"),
        (multipart([("model", "base")], b"1", name="audio"), {}, 400, "send the audio as 'file'"),
        (multipart([("model", "base")])[:-10], {}, 400, "ended before its closing boundary"),
        (multipart([("model", "base")]).replace(b"form-data;", b"attachment;", 1), {}, 400, "form-data"),
        (b"garbage without any boundary", {}, 400, ""),
    ]
    for body, limits, status, message in cases:
        with pytest.raises(ApiError) as e:
            parse(body, **limits)
        assert e.value.status == status and message in str(e.value), (body[:60], str(e.value))


def test_content_type_must_be_multipart_with_a_boundary():
    from brogue.server.openai.errors import ApiError
    from brogue.server.openai.upload import boundary_of

    assert boundary_of('multipart/form-data; boundary="abc"') == b"abc"
    for bad in (None, "application/json", "multipart/form-data"):
        with pytest.raises(ApiError) as e:
            boundary_of(bad)
        assert e.value.status == 400


def test_routing_of_the_shared_port_and_the_error_shape():
    from brogue.errors import ErrorCode
    from brogue.server.http_front import is_api_request
    from brogue.server.openai.errors import ApiError

    assert is_api_request("POST", "/v1/audio/transcriptions") and is_api_request("GET", "/v1/models")
    assert is_api_request("GET", "/v1/models/base?x=1") and is_api_request("POST", "/metrics")
    assert not any(is_api_request("GET", p) for p in ("/v1/stream", "/v1/stream?api_key=k", "/", "/metrics",
                                                      "/healthz", "/v1/modelsx"))
    e = ApiError(ErrorCode.LIMIT, "full")
    assert e.status == 429 and ("Retry-After", "1") in e.headers()
    assert e.body() == {"error": {"message": "full", "type": "requests", "param": None, "code": "limit"}}
    assert ApiError(ErrorCode.NOT_FOUND, "x", param="model").body()["error"]["type"] == "invalid_request_error"
    assert ApiError(ErrorCode.UNAVAILABLE, "x").status == 503


def test_the_shared_port_without_servers_behind_it():
    """http_front + http11 alone, an echo app on the API side: keep-alive, chunked bodies, 100-continue,
    malformed heads, the WebSocket layer on the same port, and shutdown with an idle connection."""
    from websockets.asyncio.client import connect

    from brogue.server.http_front import serve_http_port

    async def app(conn):
        body = b""
        while (data := await conn.receive(5)) is not None:
            body += data
        await conn.respond(200, [("Content-Type", "text/plain")], b"got %d" % len(body))

    async def ws_handler(ws):
        await ws.send("hi")

    def process_request(conn, request):
        return conn.respond(200, "ok\n") if request.path == "/livez" else None

    async def exchange(port, data, until=b"", *, then=b""):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(data)
        out = b""
        if until:
            while until not in out:
                out += await asyncio.wait_for(reader.read(65536), 5)
            writer.write(then)
        try:
            while chunk := await asyncio.wait_for(reader.read(65536), 2):
                out += chunk
        except asyncio.TimeoutError:
            pass
        writer.close()
        return out

    async def main():
        http = await serve_http_port(ws_handler, process_request, app, "127.0.0.1", 0, max_size=1 << 20,
                                     ping_interval=20, ping_timeout=20)
        port = list(http.sockets)[0].getsockname()[1]
        post = b"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: x\r\n"
        chunked = post + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n3\r\nabc\r\n0\r\n\r\n"
        out = await exchange(port, chunked + chunked + b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n")
        assert out.count(b"got 8") == 2 and out.endswith(b"ok\n"), out
        out = await exchange(port, post + b"Content-Length: 4\r\nExpect: 100-continue\r\n\r\n",
                             until=b"100 Continue", then=b"abcd")
        assert out.startswith(b"HTTP/1.1 100 Continue\r\n") and out.endswith(b"got 4"), out
        out = await exchange(port, post + b"Content-Length: nope\r\n\r\n")
        assert out.startswith(b"HTTP/1.1 400 "), out
        out = await exchange(port, post + b"Content-Length: 10\r\n\r\nabc")  # a short body, then EOF
        async with connect(f"ws://127.0.0.1:{port}/v1/stream") as ws:
            assert await ws.recv() == "hi"
        reader, writer = await asyncio.open_connection("127.0.0.1", port)  # idle keep-alive at shutdown
        writer.write(post + b"Content-Length: 0\r\n\r\n")
        assert b"got 0" in await asyncio.wait_for(reader.read(65536), 5)
        http.close(close_connections=False)
        await asyncio.wait_for(http.wait_closed(), 5)
        assert await asyncio.wait_for(reader.read(65536), 5) == b""  # closed by the port
        writer.close()

    asyncio.run(main())


# -- end to end: the official client on a real gateway ------------------------------------------------

def pcm16(audio):
    return (np.clip(audio, -1, 1) * 32767).astype("<i2")


def as_model(audio):
    """What the gateway decodes from a PCM16 WAV of ``audio``."""
    return pcm16(audio).astype(np.float32) / 32768


def wav(audio, rate=16000) -> bytes:
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, pcm16(audio), rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def squash(text: str) -> str:
    return text.replace(" ", "")


def client(gw, key=DEMO_KEYS["base"], scheme="http", **kw):
    from openai import OpenAI

    return OpenAI(base_url=f"{scheme}://127.0.0.1:{gw.http_port}/v1", api_key=key, max_retries=0, **kw)


@pytest.fixture(scope="module")
def speech():
    return demo_speech(np.random.default_rng(41), 8.0)


@pytest.mark.nemo
def test_every_response_format_with_the_official_client(gateway, demo_repo, speech):
    c = client(gateway, DEMO_KEYS["scot"])
    data = wav(speech)
    want = reference_text(demo_repo, as_model(speech), "scot")
    assert want

    r = c.audio.transcriptions.create(file=("a.wav", data), model="whisper-1")  # json; the tenant's adapter
    assert squash(r.text) == squash(want)
    text = c.audio.transcriptions.create(file=("a.wav", data), model="whisper-1", response_format="text")
    assert isinstance(text, str) and text.endswith("\n") and text.strip() == r.text

    v = c.audio.transcriptions.create(file=("a.wav", data), model="scottish", response_format="verbose_json",
                                      timestamp_granularities=["word", "segment"], language="en", temperature=0)
    assert v.text == r.text and v.language == "english" and v.duration == pytest.approx(8.0, abs=0.01)
    assert v.segments and " ".join(s.text for s in v.segments) == v.text
    assert [s.id for s in v.segments] == list(range(len(v.segments)))
    for a, b in zip(v.segments, v.segments[1:]):
        assert a.start <= a.end <= b.start + 1e-6
    assert v.words and " ".join(w.word for w in v.words) == v.text
    assert all(0 <= w.start < w.end <= 8.0 + 0.7 for w in v.words)
    assert [w.start for w in v.words] == sorted(w.start for w in v.words)
    words_only = c.audio.transcriptions.create(file=("a.wav", data), model="scottish@v1",
                                               response_format="verbose_json", timestamp_granularities=["word"])
    assert words_only.words and not words_only.segments
    default = c.audio.transcriptions.create(file=("a.wav", data), model="whisper-1", response_format="verbose_json")
    assert default.segments and not default.words

    srt = c.audio.transcriptions.create(file=("a.wav", data), model="whisper-1", response_format="srt")
    cues = srt.strip().split("\n\n")
    assert len(cues) == len(v.segments)
    first = cues[0].split("\n")
    assert first[0] == "1" and " --> " in first[1] and first[2] == v.segments[0].text
    vtt = c.audio.transcriptions.create(file=("a.wav", data), model="whisper-1", response_format="vtt")
    assert vtt.startswith("WEBVTT\n\n") and vtt.count(" --> ") == len(v.segments)

    # `base` routes a tenant with an adapter to the base model
    r = c.audio.transcriptions.create(file=("a.wav", data), model="base")
    assert squash(r.text) == squash(reference_text(demo_repo, as_model(speech)))
    assert squash(r.text) != squash(want)


@pytest.mark.nemo
def test_models_list_what_the_tenant_may_use(gateway, demo_repo):
    import openai

    ids = {m.id: m for m in client(gateway, DEMO_KEYS["scot"]).models.list()}
    assert set(ids) == {"whisper-1", "base", demo_repo.refs["scot"]}
    m = ids[demo_repo.refs["scot"]]
    assert m.object == "model" and m.owned_by == "tenant:scot" and m.created > 1_600_000_000
    assert {m.id for m in client(gateway, DEMO_KEYS["base"]).models.list()} == {"whisper-1", "base"}
    assert client(gateway, DEMO_KEYS["scot"]).models.retrieve("scottish").id == "scottish"
    with pytest.raises(openai.NotFoundError) as e:
        client(gateway, DEMO_KEYS["carib"]).models.retrieve(demo_repo.refs["scot"])
    assert e.value.body["code"] == "not_found" and e.value.body["param"] == "model"


@pytest.mark.nemo
def test_streaming_sends_deltas_as_finals_arrive_then_done(gateway, demo_repo, speech):
    c = client(gateway, DEMO_KEYS["carib"])
    stream = c.audio.transcriptions.create(file=("a.wav", wav(speech)), model="whisper-1", stream=True)
    events = list(stream)
    assert [e.type for e in events[:-1]] == ["transcript.text.delta"] * (len(events) - 1)
    assert events[-1].type == "transcript.text.done" and len(events) >= 3
    assert "".join(e.delta for e in events[:-1]) == events[-1].text
    assert squash(events[-1].text) == squash(reference_text(demo_repo, as_model(speech), "carib"))


@pytest.mark.nemo
def test_a_long_file_goes_through_the_stream_engine_chunk_by_chunk(gateway, demo_repo):
    audio = demo_speech(np.random.default_rng(42), 150.0)
    t0 = time.monotonic()
    v = client(gateway).audio.transcriptions.create(file=("long.wav", wav(audio)), model="base",
                                                    response_format="verbose_json")
    took = time.monotonic() - t0
    assert squash(v.text) == squash(reference_text(demo_repo, as_model(audio)))
    assert len(v.segments) > 10 and v.segments[-1].end > 140 and v.duration == pytest.approx(150.0, abs=0.01)
    assert took < 150  # as fast as the engine goes, not in real time
    metrics = urllib.request.urlopen(gateway.metrics_url).read().decode()
    assert 'brogue_streams_total{api="openai",tenant="base"}' in metrics


@pytest.mark.nemo
def test_other_containers_and_rates_are_decoded_and_resampled(gateway, demo_repo):
    import soundfile as sf
    import soxr

    audio = demo_speech(np.random.default_rng(43), 4.0)
    x44 = soxr.resample(audio, 16000, 44100).astype(np.float32)
    stereo = np.stack([x44, x44 * 0.5], axis=1)
    for fmt, subtype, ext in (("FLAC", "PCM_16", "flac"), ("OGG", "VORBIS", "ogg"), ("MP3", "MPEG_LAYER_III", "mp3")):
        buf = io.BytesIO()
        sf.write(buf, stereo, 44100, format=fmt, subtype=subtype)
        data = buf.getvalue()
        decoded, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
        mono = decoded.mean(axis=1, dtype=np.float32)
        want = reference_text(demo_repo, soxr.resample(mono, rate, 16000, quality="HQ").astype(np.float32))
        r = client(gateway).audio.transcriptions.create(file=(f"a.{ext}", data), model="base")
        assert squash(r.text) == squash(want), fmt


def _bad(gw, **kw):
    """The openai error a request raises."""
    import openai

    key = kw.pop("key", DEMO_KEYS["base"])
    kw.setdefault("file", ("a.wav", wav(np.zeros(1600, np.float32))))
    kw.setdefault("model", "whisper-1")
    with pytest.raises(openai.APIStatusError) as e:
        client(gw, key).audio.transcriptions.create(**kw)
    body = e.value.body
    assert set(body) == {"message", "type", "param", "code"}, body  # the client unwraps {"error": ...}
    return e.value


@pytest.mark.nemo
def test_bad_input_gets_openais_errors(gateway, demo_repo):
    import openai
    import soundfile as sf

    e = _bad(gateway, model="scottish@v1")  # not the base tenant's
    assert isinstance(e, openai.NotFoundError) and e.body["param"] == "model" and "whisper-1" in e.message
    e = _bad(gateway, file=("a.wav", b"RIFF\x00\x00\x00\x00WAVEnot really audio"))
    assert isinstance(e, openai.BadRequestError) and e.body["code"] == "bad_audio" and e.body["param"] == "file"
    e = _bad(gateway, file=("a.m4a", b"\x00\x00\x00\x20ftypM4A " + bytes(300)))
    assert isinstance(e, openai.BadRequestError) and "could not decode" in e.message
    e = _bad(gateway, response_format="xml")
    assert isinstance(e, openai.BadRequestError) and e.body["param"] == "response_format"
    e = _bad(gateway, response_format="verbose_json", timestamp_granularities=["phoneme"])
    assert isinstance(e, openai.BadRequestError) and e.body["param"] == "timestamp_granularities[]"
    e = _bad(gateway, response_format="json", timestamp_granularities=["word"])
    assert isinstance(e, openai.BadRequestError) and "verbose_json" in e.message
    e = _bad(gateway, language="fr")
    assert isinstance(e, openai.BadRequestError) and "en (english)" in e.message and e.body["param"] == "language"
    e = _bad(gateway, prompt=",".join(f"phrase {i}" for i in range(600)))
    assert isinstance(e, openai.BadRequestError) and e.body["param"] == "prompt"
    for stream in (False, True):  # a phrase the model cannot write: refused before any event
        e = _bad(gateway, prompt="aspirin, Dr. Smith in 2024", stream=stream)
        assert isinstance(e, openai.BadRequestError) and e.body["param"] == "prompt" and "'024'" in e.message
    e = _bad(gateway, response_format="srt", stream=True)
    assert isinstance(e, openai.BadRequestError) and e.body["param"] == "stream"
    too_long = io.BytesIO()  # 601 s, over the tenant's max_stream_seconds (600), in 4.8 MB
    sf.write(too_long, np.zeros(601 * 8000, np.float32), 8000, format="WAV", subtype="PCM_U8")
    e = _bad(gateway, file=("long.wav", too_long.getvalue()))
    assert e.status_code == 413 and "limit is 600 s" in e.message
    e = _bad(gateway, key="wrong-key")
    assert isinstance(e, openai.AuthenticationError) and e.body["code"] == "unauthenticated"
    for lang in ("en-US", "en_GB", "EN", "english"):  # English in any spelling is served
        client(gateway).audio.transcriptions.create(file=("a.wav", wav(np.zeros(1600, np.float32))),
                                                    model="base", language=lang)

    # what the official client cannot send: no key, no file, not multipart, another method, another path
    def raw(method, path, body=b"", headers=None):
        req = urllib.request.Request(f"http://127.0.0.1:{gateway.http_port}{path}", data=body or None,
                                     method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, dict(r.headers), r.read()
        except urllib.error.HTTPError as err:
            return err.code, dict(err.headers), err.read()

    auth = {"Authorization": f"Bearer {DEMO_KEYS['base']}"}
    form = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
    cases = [
        ("POST", "/v1/audio/transcriptions", multipart([("model", "base")], None), form, 401, "missing API key"),
        ("POST", "/v1/audio/transcriptions", multipart([("model", "base")], None), {**form, **auth}, 400, "'file'"),
        ("POST", "/v1/audio/transcriptions", multipart([], b"RIFF"), {**form, **auth}, 400, "model is required"),
        ("POST", "/v1/audio/transcriptions", b'{"model": "base"}', {"Content-Type": "application/json", **auth},
         400, "multipart/form-data"),
        ("GET", "/v1/audio/transcriptions", b"", auth, 405, "use POST"),
        ("POST", "/v1/audio/translations", b"x", auth, 404, "/v1/audio/transcriptions"),
        ("POST", "/metrics", b"x", {}, 405, "not allowed"),
        ("GET", "/v1/models", b"", {}, 401, "missing API key"),
    ]
    for method, path, body, headers, status, message in cases:
        got, hdrs, text = raw(method, path, body, headers)
        err = json.loads(text)["error"]
        assert got == status and message in err["message"], (method, path, got, err)
        assert set(err) == {"message", "type", "param", "code"}
    metrics = urllib.request.urlopen(gateway.metrics_url).read().decode()
    assert 'brogue_errors_total{api="openai",kind="not_found"}' in metrics
    live = [line for line in metrics.splitlines() if line.startswith("brogue_active_streams{")]
    assert all(line.endswith(" 0.0") for line in live), live


def _ws_stream(url, key, data: bytes, hold: asyncio.Event | None = None):
    """A WebSocket stream of ``data`` (PCM16, 16 kHz); with ``hold``, waits for it after ``ready``."""
    from websockets.asyncio.client import connect

    async def run():
        msgs = []
        async with connect(url, additional_headers={"Authorization": f"Bearer {key}"}) as ws:
            await ws.send(json.dumps({"type": "config", "sample_rate": 16000, "encoding": "pcm16"}))
            msgs.append(json.loads(await ws.recv()))
            if hold is not None:
                await hold.wait()
            for i in range(0, len(data), 3200):
                await ws.send(data[i:i + 3200])
            await ws.send(json.dumps({"type": "close"}))
            async for m in ws:
                msgs.append(json.loads(m))
        return msgs

    return run()


@pytest.mark.nemo
def test_websocket_streams_and_posts_share_the_port_at_once(gateway, demo_repo):
    from openai import AsyncOpenAI

    a, b = demo_speech(np.random.default_rng(44), 5.0), demo_speech(np.random.default_rng(45), 5.0)

    async def both():
        c = AsyncOpenAI(base_url=f"http://127.0.0.1:{gateway.http_port}/v1", api_key=DEMO_KEYS["scot"], max_retries=0)
        ws = asyncio.ensure_future(_ws_stream(gateway.ws_url, DEMO_KEYS["scot"], pcm16(a).tobytes()))
        post = asyncio.ensure_future(c.audio.transcriptions.create(file=("b.wav", wav(b)), model="whisper-1"))
        return await ws, await post

    msgs, r = asyncio.run(both())
    assert msgs[0]["type"] == "ready" and msgs[-1]["type"] == "end"
    ws_text = "".join(m["transcript"] for m in msgs if m["type"] == "final")
    assert squash(ws_text) == squash(reference_text(demo_repo, as_model(a), "scot"))
    assert squash(r.text) == squash(reference_text(demo_repo, as_model(b), "scot"))


@pytest.mark.nemo
def test_a_tenant_at_its_stream_limit_gets_429_with_retry_after(gateway):
    import openai

    async def run():
        hold = asyncio.Event()
        streams = [asyncio.ensure_future(_ws_stream(gateway.ws_url, DEMO_KEYS["carib"], b"\x00\x00" * 1600, hold))
                   for _ in range(4)]  # conftest's tenants: max_streams = 4
        await asyncio.sleep(1.5)
        c = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{gateway.http_port}/v1", api_key=DEMO_KEYS["carib"],
                               max_retries=0)
        try:
            with pytest.raises(openai.RateLimitError) as e:
                await c.audio.transcriptions.create(file=("a.wav", wav(np.zeros(16000, np.float32))), model="base")
            return e.value
        finally:
            hold.set()
            await asyncio.gather(*streams)

    e = asyncio.run(run())
    assert e.status_code == 429 and e.response.headers["retry-after"] == "1" and e.body["code"] == "limit"


def _raw_exchange(port: int, data: bytes, *, tls_ctx=None, timeout=10.0) -> bytes:
    """Send ``data`` on one connection, half-read until the server closes or goes quiet."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    if tls_ctx is not None:
        s = tls_ctx.wrap_socket(s, server_hostname="localhost")
    s.sendall(data)
    out = b""
    try:
        while chunk := s.recv(65536):
            out += chunk
    except socket.timeout:
        pass
    s.close()
    return out


@pytest.mark.nemo
def test_keep_alive_and_pipelined_requests_may_switch_to_the_websocket_layer(gateway):
    host = f"Host: 127.0.0.1\r\nAuthorization: Bearer {DEMO_KEYS['base']}\r\n"
    models = f"GET /v1/models HTTP/1.1\r\n{host}\r\n".encode()
    livez = b"GET /livez HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    out = _raw_exchange(gateway.http_port, models + models + livez, timeout=3)
    assert out.count(b"HTTP/1.1 200 OK") == 3 and out.count(b'"object": "list"') == 2 and out.endswith(b"ok\n")
    # a connection that never finishes its request line is closed by the port
    t0 = time.monotonic()
    assert _raw_exchange(gateway.http_port, b"GET /v1/mo", timeout=30) == b""
    assert time.monotonic() - t0 < 15


@pytest.fixture(scope="module")
def small_upload_gateway(demo_repo, triton_server, tmp_path_factory):
    gw = start_gateway(demo_repo, triton_server.grpc_url, tmp_path_factory.mktemp("upload"),
                       extra=["--max-upload-mb", "0.5"])
    yield gw
    stop_gateway(gw)


@pytest.mark.nemo
def test_an_oversize_upload_is_refused_with_413_before_it_is_read(small_upload_gateway):
    import openai

    gw = small_upload_gateway
    big = wav(demo_speech(np.random.default_rng(46), 20.0))  # 640 kB
    with pytest.raises(openai.APIStatusError) as e:
        client(gw).audio.transcriptions.create(file=("a.wav", big), model="base")
    assert e.value.status_code == 413 and e.value.body["code"] == "too_large" and "0.5 MB" in e.value.message
    small = wav(demo_speech(np.random.default_rng(47), 3.0))
    assert client(gw).audio.transcriptions.create(file=("a.wav", small), model="base").text

    # chunked, with no Content-Length: the 413 comes while the client is still sending
    head = (f"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {DEMO_KEYS['base']}\r\n"
            f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\nTransfer-Encoding: chunked\r\n\r\n").encode()
    part = multipart([("model", "base")], big)[:600_000]
    s = socket.create_connection(("127.0.0.1", gw.http_port), timeout=10)
    s.sendall(head + f"{len(part):x}\r\n".encode() + part + b"\r\n")
    reply = s.recv(65536)
    assert reply.startswith(b"HTTP/1.1 413 ") and b"connection: close" in reply.lower(), reply[:200]
    s.close()
    # a Content-Length over the limit is refused from the head alone; Expect: 100-continue sends no body
    out = _raw_exchange(gw.http_port, head.replace(b"Transfer-Encoding: chunked", b"Content-Length: 900000000\r\n"
                                                   b"Expect: 100-continue"))
    assert out.startswith(b"HTTP/1.1 413 ") and b"100 Continue" not in out


@pytest.mark.nemo
def test_no_triton_ready_is_503_with_retry_after(demo_repo, tmp_path):
    """A gateway whose Triton is down (nothing listens at its URL)."""
    import openai
    from conftest import write_tenants

    write_tenants(tmp_path / "tenants.toml", demo_repo.refs)
    http = free_port()
    log = (tmp_path / "gw.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "brogue.cli", "serve", "--model-repository", str(demo_repo.root),
                             "--tenants", str(tmp_path / "tenants.toml"), "--triton-url", f"127.0.0.1:{free_port()}",
                             "--http-port", str(http), "--grpc-port", str(free_port()),
                             "--admin-port", str(free_port())], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{http}/livez", timeout=1)
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "gw.log").read_text()
                time.sleep(0.2)
        c = openai.OpenAI(base_url=f"http://127.0.0.1:{http}/v1", api_key=DEMO_KEYS["base"], max_retries=0)
        with pytest.raises(openai.InternalServerError) as e:
            c.audio.transcriptions.create(file=("a.wav", wav(np.zeros(1600, np.float32))), model="base")
        assert e.value.status_code == 503 and e.value.response.headers["retry-after"] == "1"
        assert e.value.body["code"] == "unavailable" and e.value.body["type"] == "server_error"
        assert {m.id for m in c.models.list()} == {"whisper-1", "base"}  # listing needs no Triton
    finally:
        proc.terminate()
        proc.wait(15)


@pytest.mark.nemo
def test_tls_serves_the_api_and_the_websocket(demo_repo, triton_server, tmp_path):
    import openai

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    r = subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
                        "-out", str(cert), "-days", "2", "-subj", "/CN=localhost",
                        "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    gw = start_gateway(demo_repo, triton_server.grpc_url, tmp_path, extra=["--tls-cert", str(cert), "--tls-key", str(key)])
    try:
        ctx = ssl.create_default_context(cafile=str(cert))
        c = client(gw, DEMO_KEYS["scot"], scheme="https", http_client=openai.DefaultHttpxClient(verify=ctx))
        audio = demo_speech(np.random.default_rng(48), 3.0)
        r = c.audio.transcriptions.create(file=("a.wav", wav(audio)), model="whisper-1")
        assert squash(r.text) == squash(reference_text(demo_repo, as_model(audio), "scot"))
        out = _raw_exchange(gw.http_port, b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n", tls_ctx=ctx)
        assert out.startswith(b"HTTP/1.1 200 OK") and out.endswith(b"ok\n")
    finally:
        stop_gateway(gw)


def _active(gw, tenant: str) -> float:
    metrics = urllib.request.urlopen(gw.metrics_url).read().decode()
    line = f'brogue_active_streams{{api="openai",tenant="{tenant}"}} '
    return next((float(x[len(line):]) for x in metrics.splitlines() if x.startswith(line)), 0.0)


@pytest.mark.nemo
def test_a_client_that_goes_away_mid_transcription_ends_its_stream_at_once(gateway):
    body = multipart([("model", "base")], wav(demo_speech(np.random.default_rng(49), 120.0)))
    head = (f"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {DEMO_KEYS['base']}\r\n"
            f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\nContent-Length: {len(body)}\r\n\r\n")
    s = socket.create_connection(("127.0.0.1", gateway.http_port), timeout=10)
    s.sendall(head.encode() + body)
    deadline = time.monotonic() + 5
    while _active(gateway, "base") < 1:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    s.close()  # 2 minutes of audio take the engine several seconds; the stream ends long before
    deadline = time.monotonic() + 2
    while _active(gateway, "base") > 0:
        assert time.monotonic() < deadline, "the stream of a vanished client is still live"
        time.sleep(0.05)


@pytest.mark.nemo
def test_sigterm_lets_a_running_transcription_finish(demo_repo, triton_server, tmp_path):
    import signal
    from concurrent.futures import ThreadPoolExecutor

    gw = start_gateway(demo_repo, triton_server.grpc_url, tmp_path)
    try:
        audio = demo_speech(np.random.default_rng(50), 30.0)
        with ThreadPoolExecutor(1) as pool:
            fut = pool.submit(client(gw).audio.transcriptions.create, file=("a.wav", wav(audio)), model="base")
            deadline = time.monotonic() + 5
            while _active(gw, "base") < 1:
                assert time.monotonic() < deadline
                time.sleep(0.05)
            gw.process.send_signal(signal.SIGTERM)
            r = fut.result(30)
        assert squash(r.text) == squash(reference_text(demo_repo, as_model(audio)))
        assert gw.process.wait(15) is not None
    finally:
        stop_gateway(gw)


@pytest.mark.nemo
def test_the_prompt_boosts_its_phrases(gateway, demo_repo, tmp_path):
    """A drug name the demo model misses (read by espeak-ng, as tests/test_boosting.py's clips), found
    once the prompt names it (boost 8); equal to the in-process runner with the prompt's phrases."""
    import shutil

    import soundfile as sf
    from brogue.boosting import phrases_from_prompt
    from conftest import _reference_runner

    assert shutil.which("espeak-ng") and shutil.which("sox"), "espeak-ng and sox are needed (make test installs them)"
    raw, wav_file = tmp_path / "raw.wav", tmp_path / "clip.wav"
    subprocess.run(["espeak-ng", "-v", "en-us", "-s", "150", "-w", str(raw), "start gabapentin for the pain"], check=True)
    subprocess.run(["sox", str(raw), "-r", "16000", "-c", "1", "-b", "16", str(wav_file)], check=True)
    audio, _ = sf.read(wav_file, dtype="float32")
    runner = _reference_runner(str(demo_repo.model_dir))
    texts = {}
    for prompt in ("", "Gabapentin, metformin"):
        r = client(gateway).audio.transcriptions.create(file=("clip.wav", wav_file.read_bytes()), model="base",
                                                        prompt=prompt)
        (st,) = runner.transcribe([audio], boosts=[phrases_from_prompt(prompt)])
        assert r.text == runner.detok.decode(st.tokens), prompt
        texts[prompt] = r.text.split()
    assert "gabapentin" not in texts[""] and "gabapentin" in texts["Gabapentin, metformin"]
