"""recipes/augment.py: noise at a measured SNR, synthetic reverberation, the G.711 phone path, and
the plan sampler, on the committed demo clips (real 16 kHz speech)."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from recipes import augment as aug  # noqa: E402

CLIPS = sorted((REPO / "tests" / "data" / "demo").glob("*.flac"))
DEMO_MODEL = REPO / "model_repo" / "exported" / "demo"


def load(path: Path) -> np.ndarray:
    x, sr = sf.read(path, dtype="float32")
    assert sr == 16000 and x.ndim == 1
    return x


@pytest.fixture(scope="module")
def speech() -> dict[str, np.ndarray]:
    return {p.stem: load(p) for p in CLIPS}


def measured_snr(x: np.ndarray, y: np.ndarray) -> float:
    """Independent re-measurement: active frames (20 ms, > -35 dB re the 95th-percentile frame
    power) of the clean speech; the noise is what the output adds, after undoing any peak scaling
    (least-squares gain of the clean signal in the output)."""
    x, y = x.astype(np.float64), y.astype(np.float64)
    frame = 320
    n = len(x) // frame
    p = np.mean(x[: n * frame].reshape(n, frame) ** 2, axis=1)
    act = np.repeat(p > np.percentile(p, 95) * 10 ** (-35 / 10), frame)
    act = np.concatenate([act, np.full(len(x) - len(act), act[-1])])
    g = np.dot(y, x) / np.dot(x, x)
    noise = y / g - x
    return float(10 * np.log10(np.mean(x[act] ** 2) / np.mean(noise[act] ** 2)))


def check_audio(y: np.ndarray, n: int | None = None):
    assert y.dtype == np.float32
    assert np.all(np.isfinite(y))
    assert y.size == 0 or np.max(np.abs(y)) <= 1.0
    if n is not None:
        assert len(y) == n


# ------------------------------------------------------------------------------------------- noise

@pytest.mark.parametrize("kind", ["white", "pink", "babble", "hum"])
def test_add_noise_hits_the_target_snr(speech, kind):
    x = speech["base"]
    others = [speech[k] for k in ("scottish", "german", "medical", "indian")]
    for snr in (0.0, 10.0, 20.0, -5.0):
        for level in (0.1, 1.0):  # 1.0: loud enough that the sum must be scaled down
            xs = (x * level / np.max(np.abs(x))).astype(np.float32)
            y = aug.add_noise(xs, snr, np.random.default_rng(7), kind=kind, others=others)
            check_audio(y, len(xs))
            got = measured_snr(xs, y)
            assert abs(got - snr) < 0.5, (kind, snr, level, got)


def test_babble_without_others_is_speech_shaped(speech):
    x = speech["base"] * 0.1
    y = aug.add_noise(x, 0.0, np.random.default_rng(1), kind="babble")
    assert abs(measured_snr(x, y) - 0.0) < 0.5
    # speech-shaped: the noise's long-term spectrum follows the speech's (most energy < 4 kHz),
    # unlike white noise's (half of it above 4 kHz)
    noise = y.astype(np.float64) - x
    spec = np.abs(np.fft.rfft(noise)) ** 2
    f = np.fft.rfftfreq(len(noise), 1 / 16000)
    sspec = np.abs(np.fft.rfft(x)) ** 2
    frac_n = spec[f < 4000].sum() / spec.sum()
    frac_s = sspec[f < 4000].sum() / sspec.sum()
    assert abs(frac_n - frac_s) < 0.1 and frac_n > 0.6


def test_hum_is_mains_harmonics(speech):
    x = speech["base"] * 0.1
    y = aug.add_noise(x, 0.0, np.random.default_rng(3), kind="hum").astype(np.float64) - x
    spec = np.abs(np.fft.rfft(y)) ** 2
    f = np.fft.rfftfreq(len(y), 1 / 16000)
    near = np.zeros_like(f, dtype=bool)
    for f0 in (50, 60):
        for h in range(1, 9):
            near |= np.abs(f - f0 * h) < 3
    assert spec[near].sum() / spec.sum() > 0.95


def test_silent_input_is_returned_unchanged():
    z = np.zeros(16000, dtype=np.float32)
    y = aug.add_noise(z, 10.0, np.random.default_rng(0))
    check_audio(y, len(z))
    assert not np.any(y)


# ------------------------------------------------------------------------------------------- reverb

def schroeder_rt60(h: np.ndarray, rate: int = 16000) -> float:
    """T30: the Schroeder energy decay curve's slope fitted between -5 and -35 dB, extrapolated to
    60 dB."""
    edc = np.cumsum((h.astype(np.float64) ** 2)[::-1])[::-1]
    edc_db = 10 * np.log10(edc / edc[0])
    sel = (edc_db <= -5) & (edc_db >= -35)
    t = np.nonzero(sel)[0] / rate
    slope = np.polyfit(t, edc_db[sel], 1)[0]
    return -60.0 / slope


@pytest.mark.parametrize("rt60", [0.2, 0.4, 0.6, 0.8])
def test_room_ir_decays_60_db_in_rt60(rt60):
    for seed in range(3):
        for drr in (0.0, 10.0):
            h = aug.room_ir(rt60, np.random.default_rng(seed), drr_db=drr)
            assert abs(schroeder_rt60(h) - rt60) < 0.1 * rt60, (rt60, seed, drr, schroeder_rt60(h))
            got_drr = 10 * np.log10(h[0] ** 2 / np.sum(h[1:] ** 2))
            assert abs(got_drr - drr) < 1e-6


def tail_s(x: np.ndarray, floor_db: float = -50.0) -> float:
    """Seconds from the last 10 ms frame above ``floor_db`` re the loudest frame to the end."""
    frame = 160
    n = len(x) // frame
    p = np.mean(x[: n * frame].astype(np.float64).reshape(n, frame) ** 2, axis=1)
    last = np.nonzero(p > p.max() * 10 ** (floor_db / 10))[0][-1]
    return (len(x) - (last + 1) * frame) / 16000


def test_reverberation_lengthens_the_energy_tail(speech):
    x = speech["base"]
    y = aug.reverberate(x, 0.6, np.random.default_rng(0), drr_db=0.0)
    check_audio(y, len(x))
    # the decay fills the trailing silence: at least 0.15 s more of it is above the floor
    assert tail_s(x) - tail_s(y) > 0.15, (tail_s(x), tail_s(y))
    # levels stay comparable: same RMS
    assert abs(np.sqrt(np.mean(y.astype(np.float64) ** 2)) / np.sqrt(np.mean(x.astype(np.float64) ** 2)) - 1) < 0.02
    # longer RT60, longer tail
    y2 = aug.reverberate(x, 0.2, np.random.default_rng(0), drr_db=0.0)
    assert tail_s(y2) > tail_s(y)


def test_reverberate_keep_tail_length(speech):
    x = speech["indian"]
    y = aug.reverberate(x, 0.5, np.random.default_rng(0), keep_tail=True)
    check_audio(y, len(x) + len(aug.room_ir(0.5, np.random.default_rng(0))) - 1)
    loud = (x / np.max(np.abs(x))).astype(np.float32)
    y = aug.reverberate(loud, 0.8, np.random.default_rng(0), drr_db=-5.0)
    check_audio(y, len(x))


# ----------------------------------------------------------------------------------------- telephone

def test_g711_bit_exact_with_audioop():
    with warnings.catch_warnings():  # deprecated, but the reference G.711 codec on Python 3.11-3.12
        warnings.simplefilter("ignore", DeprecationWarning)
        import audioop
    pcm = np.arange(-32768, 32768, dtype=np.int16)  # every int16 value
    rng = np.random.default_rng(0)
    speech8k = np.clip(rng.standard_normal(8000) * 3000, -32768, 32767).astype(np.int16)
    codes = np.arange(256, dtype=np.uint8)
    for data in (pcm, speech8k):
        u = np.frombuffer(audioop.lin2ulaw(data.tobytes(), 2), np.uint8)
        a = np.frombuffer(audioop.lin2alaw(data.tobytes(), 2), np.uint8)
        assert np.array_equal(aug.lin2ulaw(data), u)
        assert np.array_equal(aug.lin2alaw(data), a)
        assert np.array_equal(aug.ulaw2lin(aug.lin2ulaw(data)),
                              np.frombuffer(audioop.ulaw2lin(u.tobytes(), 2), np.int16))
        assert np.array_equal(aug.alaw2lin(aug.lin2alaw(data)),
                              np.frombuffer(audioop.alaw2lin(a.tobytes(), 2), np.int16))
    assert np.array_equal(aug.ulaw2lin(codes), np.frombuffer(audioop.ulaw2lin(codes.tobytes(), 2), np.int16))
    assert np.array_equal(aug.alaw2lin(codes), np.frombuffer(audioop.alaw2lin(codes.tobytes(), 2), np.int16))


@pytest.mark.parametrize("codec", ["mulaw", "alaw"])
def test_telephone_band_and_level(speech, codec):
    for name in ("base", "german"):
        x = speech[name]
        y = aug.telephone(x, codec)
        check_audio(y, len(x))
        f = np.fft.rfftfreq(len(y), 1 / 16000)
        py = np.abs(np.fft.rfft(y.astype(np.float64))) ** 2
        out_of_band = py[(f < 250) | (f > 3600)].sum() / py.sum()
        assert out_of_band < 1e-3, out_of_band
        # the band itself passes at the same level (within 1 dB) ...
        px = np.abs(np.fft.rfft(x.astype(np.float64))) ** 2
        band = (f > 400) & (f < 3300)
        assert abs(10 * np.log10(py[band].sum() / px[band].sum())) < 1.0
        # ... with 8-bit companding noise: not the band-limited input exactly, but close (~35 dB)
        spec_x = np.fft.rfft(x.astype(np.float64))
        ref = np.fft.irfft(spec_x * band, n=len(x))
        err = np.fft.irfft(np.fft.rfft(y.astype(np.float64)) * band, n=len(x)) - ref
        snr = 10 * np.log10(np.sum(ref ** 2) / np.sum(err ** 2))
        assert 20 < snr < 50, snr


# ------------------------------------------------------------------------------ sampler, determinism

def test_plan_sampler_applies_steps_at_their_probability():
    rng = np.random.default_rng(0)
    n = 4000
    counts = {"reverb": 0, "noise": 0, "telephone": 0}
    kinds: dict[str, int] = {}
    for _ in range(n):
        chosen = aug.sample_plan(rng)
        for k in chosen:
            counts[k] += 1
        if "reverb" in chosen:
            assert 0.2 <= chosen["reverb"]["rt60_s"] <= 0.8
            assert 0.0 <= chosen["reverb"]["drr_db"] <= 10.0
        if "noise" in chosen:
            assert 0.0 <= chosen["noise"]["snr_db"] <= 20.0
            kinds[chosen["noise"]["kind"]] = kinds.get(chosen["noise"]["kind"], 0) + 1
        if "telephone" in chosen:
            assert chosen["telephone"]["codec"] in ("mulaw", "alaw")
    for step, p in (("reverb", 0.3), ("noise", 0.5), ("telephone", 0.2)):
        assert abs(counts[step] / n - p) < 0.03, (step, counts[step] / n)
    assert set(kinds) == set(aug.NOISE_KINDS)
    assert min(kinds.values()) > 0.15 * counts["noise"]
    # a custom plan: always and never
    plan = {"reverb": {"p": 1.0, "rt60_s": [0.3, 0.3]}, "noise": {"p": 0.0}, "telephone": {"p": 1.0, "codecs": ["alaw"]}}
    c = aug.sample_plan(np.random.default_rng(1), plan)
    assert set(c) == {"reverb", "telephone"} and c["telephone"]["codec"] == "alaw"


def test_augment_outputs_and_determinism(speech):
    import json

    x = speech["medical"]
    others = [speech["scottish"], speech["caribbean"]]
    plan = {"reverb": {"p": 0.5, "rt60_s": [0.2, 0.8], "drr_db": [0, 10]},
            "noise": {"p": 0.7, "snr_db": [0, 20], "kinds": list(aug.NOISE_KINDS)},
            "telephone": {"p": 0.4, "codecs": ["mulaw", "alaw"]}}
    seen = set()
    for seed in range(12):
        y1, a1 = aug.augment(x, np.random.default_rng(seed), plan, others=others)
        y2, a2 = aug.augment(x, np.random.default_rng(seed), plan, others=others)
        check_audio(y1, len(x))
        assert a1 == a2 and np.array_equal(y1, y2)
        json.dumps(a1)
        seen.add(tuple(sorted(a1)))
        if not a1:
            assert np.array_equal(y1, x)
    assert len(seen) >= 3  # different seeds give different chains
    # each transform alone is deterministic given the Generator, and seed-dependent
    for f in (lambda r: aug.add_noise(x, 5.0, r, kind="babble", others=others),
              lambda r: aug.add_noise(x, 5.0, r, kind="pink"),
              lambda r: aug.reverberate(x, 0.5, r)):
        assert np.array_equal(f(np.random.default_rng(5)), f(np.random.default_rng(5)))
        assert not np.array_equal(f(np.random.default_rng(5)), f(np.random.default_rng(6)))
    # NaN or inf in, finite out
    bad = x.copy()
    bad[100] = np.nan
    bad[200] = np.inf
    y, _ = aug.augment(bad, np.random.default_rng(0), {k: {**v, "p": 1.0} for k, v in plan.items()})
    check_audio(y, len(x))


# --------------------------------------------------------------------- as the demo model hears it

def test_demo_model_hears_the_noise_level(speech):
    from brogue.clients.eval import error_rates
    from brogue.engine.runner import StreamingRunner

    r = StreamingRunner(DEMO_MODEL, decoder="greedy")
    names = ["base", "caribbean", "medical"]
    clean = [speech[n] for n in names]

    def hyps(audios):
        return [r.detok.decode(s.tokens) for s in r.transcribe(audios)]

    h_clean = hyps(clean)
    cer = {}
    for snr in (40.0, 20.0, -5.0):
        noisy = [aug.add_noise(a, snr, np.random.default_rng(i), "white") for i, a in enumerate(clean)]
        cer[snr] = error_rates(h_clean, hyps(noisy))[1]
    print("CER against the clean transcripts:", cer)
    # The demo model was trained on clean TTS only and is fragile to noise (measured: CER against
    # its clean transcripts ~0.2 at 40 dB, ~0.65 at 20 dB, ~0.95 at -5 dB), so 20 dB is held to
    # < 0.8, not < 0.5; the checks that matter: degradation grows as the SNR falls, near-clean at
    # 40 dB, and -5 dB is far worse than 20 dB.
    assert cer[40.0] < 0.35
    assert cer[40.0] < cer[20.0] < 0.8
    assert cer[-5.0] > cer[20.0] + 0.2


def test_short_and_empty_inputs_keep_their_length():
    rng = np.random.default_rng(0)
    full = {k: {**v, "p": 1.0} for k, v in aug.DEFAULT_PLAN.items()}
    for n in (0, 1, 100, 321):
        x = (rng.standard_normal(n) * 0.1).astype(np.float32)
        for kind in aug.NOISE_KINDS:
            check_audio(aug.add_noise(x, 10.0, rng, kind), n)
        check_audio(aug.reverberate(x, 0.3, rng), n)
        check_audio(aug.telephone(x, "alaw"), n)
        check_audio(aug.augment(x, rng, full)[0], n)
