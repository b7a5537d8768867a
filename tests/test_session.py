"""The I/O-free parts of the gateway: audio decoding/resampling, endpointing, the stream session."""

from __future__ import annotations

import audioop  # noqa: F401 - deprecated, but the reference G.711 decoder on Python 3.11
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from brogue.audio.codecs import AudioDecoder, AudioFormatError, decode
from brogue.server.endpointing import EndpointingConfig, Endpointer
from brogue.server.session import ModelInfo, SessionConfig, StreamSession

CHARS = [" "] + [chr(c) for c in range(97, 123)] + ["'"]
MODEL = ModelInfo(CHARS, "char", frame_seconds=0.08, chunk_samples=8960)


def test_g711_tables_equal_the_reference():
    b = bytes(range(256))
    assert np.array_equal(decode(b, "mulaw"), np.frombuffer(audioop.ulaw2lin(b, 2), "<i2") / 32768)
    assert np.array_equal(decode(b, "alaw"), np.frombuffer(audioop.alaw2lin(b, 2), "<i2") / 32768)


@settings(max_examples=25, deadline=None)
@given(st.sampled_from([("pcm16", 8000), ("pcm16", 48000), ("float32", 44100), ("mulaw", 8000), ("alaw", 8000),
                        ("pcm16", 22050), ("float32", 16000)]),
       st.lists(st.integers(0, 5000), min_size=1, max_size=30))
def test_any_framing_gives_the_samples_of_the_whole_stream(fmt, cuts):
    encoding, rate = fmt
    rng = np.random.default_rng(len(cuts))
    x = (rng.standard_normal(rate) * 0.2).clip(-1, 1)
    raw = {"pcm16": lambda: (x * 32767).astype("<i2").tobytes(), "float32": lambda: x.astype("<f4").tobytes(),
           "mulaw": lambda: rng.integers(0, 256, rate, dtype=np.uint8).tobytes(),
           "alaw": lambda: rng.integers(0, 256, rate, dtype=np.uint8).tobytes()}[encoding]()
    whole = AudioDecoder(encoding, rate)
    want = np.concatenate([whole.feed(raw), whole.flush()])
    parts, dec, pos = [], AudioDecoder(encoding, rate), 0
    for n in cuts:
        parts.append(dec.feed(raw[pos:pos + n]))
        pos += n
    parts += [dec.feed(raw[pos:]), dec.flush()]
    got = np.concatenate(parts)
    assert got.shape == want.shape
    assert np.allclose(got, want, atol=1e-6)
    assert abs(len(got) - len(x) * 16000 / rate) <= 2


def test_bad_audio_is_refused_clearly():
    with pytest.raises(AudioFormatError, match="sample rate 11025"):
        AudioDecoder("pcm16", 11025)
    with pytest.raises(AudioFormatError, match="encoding 'opus'"):
        AudioDecoder("opus", 16000)
    with pytest.raises(AudioFormatError, match="NaN"):
        decode(np.array([0.0, np.nan], "<f4").tobytes(), "float32")


def test_pcm16_split_at_odd_bytes_is_carried_to_the_next_frame():
    """Clients that forward audio in arbitrary byte blocks (pipes, RTP bridges, file reads) split
    samples across frames: the odd byte waits for the next frame; a stray last byte is dropped."""
    pcm = (np.random.default_rng(0).standard_normal(4001) * 3000).astype("<i2").tobytes()
    whole = AudioDecoder("pcm16", 16000)
    want = np.concatenate([whole.feed(pcm), whole.flush()])
    d = AudioDecoder("pcm16", 16000)
    cuts = [0, 1, 4, 333, 3001, 8001, len(pcm) + 1]
    got = [d.feed(pcm[a:b] + (b"\x7f" if b > len(pcm) else b"")) for a, b in zip(cuts, cuts[1:])]
    got.append(d.flush())
    np.testing.assert_array_equal(np.concatenate(got), want)
    assert d.dropped_bytes == 1 and whole.dropped_bytes == 0


def test_endpointer_finds_the_end_of_speech():
    ep = Endpointer(EndpointingConfig(start_history_ms=160, start_threshold=0.5, stop_history_ms=400,
                                      stop_threshold=0.9), frame_ms=80)
    assert ep.update([0.9] * 10) is None and not ep.in_speech  # silence: nothing starts
    assert ep.update([0.1, 0.2, 0.9, 0.1]) is None and ep.in_speech
    assert ep.update([0.95, 0.95, 0.95, 0.95, 0.97, 0.99]) == 4  # 5 blank frames = 400 ms
    ep.reset()
    assert not ep.in_speech


def test_endpointing_config_validates_and_maps_riva():
    with pytest.raises(ValueError, match="stop_threshold"):
        EndpointingConfig(stop_threshold=1.5)

    class Riva:
        start_history, start_threshold, stop_history, stop_threshold = 0, 0.0, 1200, 0.95
        stop_history_eou, stop_threshold_eou = -1, 0.0

    cfg = EndpointingConfig.from_riva(Riva)
    assert cfg.stop_history_ms == 1200 and cfg.stop_threshold == 0.95
    assert cfg.start_history_ms == EndpointingConfig().start_history_ms


def _ids(text):
    return [CHARS.index(c) for c in text]


def test_session_chunks_audio_exactly():
    s = StreamSession(SessionConfig(sample_rate=8000, encoding="pcm16"), MODEL)
    rng = random.Random(0)
    raw = (np.sin(np.arange(8000 * 3) / 5) * 10000).astype("<i2").tobytes()
    chunks, pos = [], 0
    while pos < len(raw):
        n = rng.randint(1, 3000)
        chunks += s.feed_audio(raw[pos:pos + n])
        pos += n
    tail = s.end_audio()
    assert all(len(c) == MODEL.chunk_samples for c in chunks)
    total = sum(map(len, chunks)) + len(tail)
    assert abs(total - 48000) <= 2 and len(tail) < MODEL.chunk_samples


def test_session_turns_replies_into_partials_finals_and_words():
    cfg = SessionConfig(endpointing=EndpointingConfig(start_history_ms=80, start_threshold=0.5, stop_history_ms=240,
                                                      stop_threshold=0.9))
    s = StreamSession(cfg, MODEL)
    toks = _ids("hi there")
    times = [0.08 * i for i in range(len(toks))]
    ev = s.on_reply(toks, times, [0.9] * len(toks), [0.1] * len(toks))
    assert [e.kind for e in ev] == ["partial"] and ev[0].transcript == "hi there"
    assert [w.word for w in ev[0].words] == ["hi", "there"]
    w = ev[0].words[1]
    assert w.start == pytest.approx(0.24) and w.end == pytest.approx(0.64) and w.confidence == pytest.approx(0.9)
    # Three blank frames end the utterance; the token after the cut starts the next one.
    ev = s.on_reply(_ids("o"), [1.2], [0.5], [0.99, 0.99, 0.99, 0.1, 0.2])
    assert [e.kind for e in ev] == ["final", "partial"]
    assert ev[0].transcript == "hi there" and ev[0].utterance_id == 0 and ev[0].end == pytest.approx(0.64 + 0.24)
    assert ev[1].transcript == "o" and ev[1].utterance_id == 1
    ev = s.force_endpoint()
    assert [e.kind for e in ev] == ["final"] and ev[0].transcript == "o"
    assert s.on_end() == []  # nothing left


def test_no_interim_results_means_finals_only():
    s = StreamSession(SessionConfig(interim_results=False), MODEL)
    assert s.on_reply(_ids("ab"), [0.0, 0.08], [1, 1], [0.1, 0.1]) == []
    (final,) = s.on_end()
    assert final.kind == "final" and final.transcript == "ab"
