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


# -- incremental results: the same output as building each result from scratch, at a cost per token --

def _from_scratch(detok, toks, fs):
    """The transcript and words of one utterance built from all its tokens, as the session did before
    it built them incrementally: the reference the incremental results must equal."""
    groups = []
    for tok in toks:
        if not groups or detok.starts_word(tok[0]):
            groups.append([])
        groups[-1].append(tok)
    words = []
    for g in groups:
        text = detok.decode([t for t, _, _ in g])
        if text:
            spoken = [t for t in g if detok.tokens[t[0]].strip()] or g
            words.append((text, round(spoken[0][1], 3), round(g[-1][1] + fs, 3),
                          round(float(np.mean([c for _, _, c in spoken])), 4)))
    return detok.decode([t for t, _, _ in toks]), words


def _same(ev, want) -> None:
    """``ev`` (a Result) has the reference's transcript and words; confidences to their 4 decimals
    (the mean is now summed exactly, numpy's mean was not)."""
    assert ev.transcript == want[0]
    assert [(w.word, w.start, w.end) for w in ev.words] == [w[:3] for w in want[1]]
    assert [w.confidence for w in ev.words] == pytest.approx([w[3] for w in want[1]], abs=1.01e-4)


def _random_replies(rng, n_chunks, vocab, frames=6, fs=0.04, pause_every=0):
    """``n_chunks`` replies of ``frames`` frames: random tokens of ``vocab`` (ids), speech frames
    (blank prob 0.1), and with ``pause_every`` a silent stretch every that many chunks."""
    t = 0.0
    for c in range(n_chunks):
        silent = pause_every and c % pause_every in (pause_every - 2, pause_every - 1)
        toks, times, confs = [], [], []
        for f in range(frames):
            if not silent and rng.random() < 0.6:
                toks.append(rng.choice(vocab))
                times.append(round(t + f * fs, 4))
                confs.append(round(rng.uniform(0.3, 1.0), 3))
        yield toks, times, confs, [0.99 if silent else 0.1] * frames
        t += frames * fs


@pytest.mark.parametrize("kind", ["char", "sentencepiece"])
@pytest.mark.parametrize("pause_every", [0, 40])
def test_partials_and_finals_equal_results_built_from_scratch(kind, pause_every):
    if kind == "char":
        tokens, vocab = CHARS, list(range(len(CHARS)))
    else:  # word pieces, a bare mark, byte pieces of "é" (0xC3 0xA9) and the unknown piece
        tokens = ["<unk>", "\u2581", "\u2581the", "\u2581c", "at", "s", "\u2581sa", "t", "<0xC3>", "<0xA9>"]
        vocab = list(range(len(tokens)))
    model = ModelInfo(tokens, kind, frame_seconds=0.04, chunk_samples=3840)
    s = StreamSession(SessionConfig(), model)
    rng = random.Random(7)
    utt: list = []
    for toks, times, confs, blanks in _random_replies(rng, 300, vocab, pause_every=pause_every):
        events = s.on_reply(toks, times, confs, blanks)
        for ev in events:
            if ev.kind == "final":  # the utterance so far, cut where the endpointer cut it
                cut = [t for t in utt + list(zip(toks, times, confs)) if t[1] < ev.end]
                want = _from_scratch(s.detok, cut, 0.04)
                utt = [t for t in utt + list(zip(toks, times, confs)) if t[1] >= ev.end]
                toks = []
            else:
                utt += list(zip(toks, times, confs))
                toks = []
                want = _from_scratch(s.detok, utt, 0.04)
            _same(ev, want)
            assert ev.confidence == pytest.approx(np.mean([w[3] for w in want[1]]) if want[1] else 0.0, abs=1e-4)
        utt += list(zip(toks, times, confs))
    (final,) = s.on_end()
    _same(final, _from_scratch(s.detok, utt, 0.04))


def test_a_ten_minute_utterance_costs_the_same_per_reply_at_its_end_as_at_its_start():
    """No endpoint for 10 minutes (2500 replies of 240 ms): the tokens each reply touches stay
    bounded by its new tokens and the open word, however long the utterance has grown."""
    model = ModelInfo(CHARS, "char", frame_seconds=0.04, chunk_samples=3840)
    s = StreamSession(SessionConfig(), model)
    rng = random.Random(3)
    vocab = [CHARS.index(c) for c in "abcdefghij    "]  # words of a few letters
    costs, n_events = [], 0
    for toks, times, confs, blanks in _random_replies(rng, 2500, vocab):
        before = s.utterance.work
        n_events += len(s.on_reply(toks, times, confs, blanks))
        costs.append(s.utterance.work - before - len(toks))
    assert s.utterance_id == 0 and n_events > 2000  # one utterance, a partial per reply
    assert len(s.utterance.words) > 1500
    longest = max(len(w.word) for w in s.utterance.words) + 1  # with its space
    # each reply touches its closed word once and the open word for the result: a few word lengths,
    # while the utterance has grown to thousands of tokens
    assert max(costs) <= 4 * longest + 8, (max(costs), longest)
    assert np.mean(costs[-250:]) <= 1.3 * np.mean(costs[:250]) + 1


def _endpoints_by_sums(cfg, frame_ms, blank_probs):
    """The endpointer as it was, summing each window at every frame (the reference)."""
    from collections import deque

    n = lambda ms: max(1, round(ms / frame_ms))  # noqa: E731
    start, stop, eou = deque(maxlen=n(cfg.start_history_ms)), deque(maxlen=n(cfg.stop_history_ms)), \
        deque(maxlen=n(cfg.stop_history_eou_ms))
    in_speech, out = False, []
    for i, p in enumerate(blank_probs):
        blank = p >= 0.5
        if not in_speech:
            start.append(not blank)
            if len(start) == start.maxlen and sum(start) / len(start) >= cfg.start_threshold:
                in_speech = True
                stop.clear()
                eou.clear()
            out.append((False, in_speech))
            continue
        stop.append(blank)
        eou.append(blank)
        hint = len(eou) == eou.maxlen and sum(eou) / len(eou) >= cfg.stop_threshold_eou
        if len(stop) == stop.maxlen and sum(stop) / len(stop) >= cfg.stop_threshold:
            out.append(("end", hint))
            start.clear(), stop.clear(), eou.clear()
            in_speech = False
            continue
        out.append((hint, in_speech))
    return out


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(0, 1), min_size=1, max_size=400), st.integers(40, 600), st.floats(0.05, 1.0))
def test_endpointer_with_sliding_counts_equals_summing_the_windows(probs, stop_ms, threshold):
    cfg = EndpointingConfig(stop_history_ms=stop_ms, stop_threshold=threshold, stop_history_eou_ms=max(40, stop_ms // 2))
    ep, got = Endpointer(cfg, 40.0), []
    for i, p in enumerate(probs):  # one frame per update, so every frame's state is seen
        if ep.update([p]) is not None:
            got.append(("end", ep.eou_hint))
            ep.reset()
        else:
            got.append((ep.eou_hint if ep.in_speech else False, ep.in_speech))
    assert got == _endpoints_by_sums(cfg, 40.0, probs)
