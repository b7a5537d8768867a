"""Make clean 16 kHz mono float32 speech sound like real capture conditions, for training data.

One job: clean utterance in, degraded utterance out (same rate, same length, float32 in [-1, 1],
never NaN), deterministic given a ``numpy.random.Generator``. Pure numpy plus soxr (resampling for
the phone path); no noise or room-impulse-response data set is downloaded or read: every noise and
every room is synthesised here. The transforms, in the order :func:`augment` chains them:

* **Reverberation** (:func:`reverberate`): a talker in a room, heard from a distance. The signal is
  convolved (numpy FFT) with a synthetic impulse response: a direct-path impulse at t = 0 followed
  by Gaussian noise under an exponential envelope whose energy falls by 60 dB in ``rt60_s``
  (amplitude ``exp(-ln(1000) t / rt60)``), 1.5 x rt60 long. ``drr_db`` sets the direct-to-reverberant
  energy ratio (default :data:`DEFAULT_DRR_DB`; lower = farther from the microphone). The output is
  scaled back to the input's RMS (levels stay comparable), then peak-limited. Length: the output has
  the input's length; the reverberant tail past the end of the input is cut, so that manifest
  durations and any alignments stay valid (the demo clips end in 0.2-0.6 s of silence, which the
  tail fills). ``keep_tail=True`` keeps it (output longer by the IR length - 1).
* **Additive noise** (:func:`add_noise`) at a speech-to-noise ratio ``snr_db`` measured over the
  speech's *active* part: frames of 20 ms whose power is above :data:`ACTIVE_DB` (-35 dB) relative to
  the loudest 5% of frames (the 95th-percentile frame power). Both the speech power and the noise
  power are averaged over those same active frames, so leading/trailing silence does not dilute
  the speech level, and a non-stationary noise is measured where it masks the speech. Kinds:
  ``white``; ``pink`` (1/f power, shaped in the FFT domain, flat below 20 Hz, no DC);
  ``babble``: with ``others`` (other utterances, 16 kHz), the sum of up to ``talkers`` (4) of them,
  each circularly shifted by a random offset, looped to the input's length, given its own random
  spectral tilt (+-6 dB/decade around 1 kHz) and low-pass corner (2.5-7 kHz), a level within +-3 dB;
  without ``others``, speech-shaped noise: white noise filtered to the input's own long-term
  average spectrum (Welch over its active frames), i.e. babble from infinitely many talkers;
  ``hum``: mains hum, 50 or 60 Hz (random) with harmonics 1-8 at amplitude 1/h and random phases,
  plus white noise 30 dB below the hum.
* **Telephone** (:func:`telephone`): the narrowband phone path of a call centre. The send filter
  (G.712-like: pass 300-3400 Hz, raised-cosine skirts to 250 Hz and 3600 Hz, zero outside; FFT
  domain at 8 kHz), resampling 16 -> 8 kHz (soxr, VHQ), conversion to 16-bit PCM, G.711 companding
  (``mulaw`` or ``alaw``: 8-bit encode and decode, implemented here in numpy after the reference
  C code of G.711 as Python's audioop has it, bit-exact with ``audioop.lin2ulaw``/``ulaw2lin`` and
  ``lin2alaw``/``alaw2lin`` on all 65536 int16 values), the receive filter (the same band-pass:
  the decoder's reconstruction filter), and resampling back to 16 kHz (the model's rate). The
  result is 16 kHz audio with telephone bandwidth and 8-bit companding noise. ``rng`` is accepted
  for a uniform signature and unused (the path is deterministic).

:func:`augment` samples a chain from a plan (:data:`DEFAULT_PLAN`: reverb with p = 0.3, RT60
uniform 0.2-0.8 s, DRR uniform 0-10 dB; noise with p = 0.5, SNR uniform 0-20 dB, kind uniformly
from white/pink/babble/hum; telephone with p = 0.2, codec mu-law or A-law) and returns the audio
and a JSON-ready dict of what was applied (``{}`` for none), for a manifest row's ``augment`` field.
Every decision is drawn whether or not the step applies, so one Generator state gives one chain.

Every function returns float32; if the peak exceeds 1 the whole signal is scaled down to a peak of
:data:`PEAK` (0.99): nothing is clipped. Silent input (no active frames) is returned unchanged by
:func:`add_noise` (its SNR is undefined).

Measured (tests/test_augment.py, on the committed demo clips, tests/data/demo/*.flac): add_noise's
SNR, re-measured from the output, is within 0.5 dB of the target for 0, 10 and 20 dB and all four
kinds; the synthetic IRs' Schroeder decay (T30, fitted from -5 to -35 dB and extrapolated) is within
10% of the requested RT60 for 0.2-0.8 s; telephone output has < 0.1% of its energy below 250 Hz or
above 3.6 kHz, the 400-3300 Hz band within 1 dB of the input's, and 20-50 dB of companding SNR in
band. The demo model (greedy; trained on clean TTS only) is fragile to noise: on the base,
caribbean and medical clips with white noise, CER against its own clean transcripts is 0.25 at 40 dB,
0.67 at 20 dB and 0.98 at -5 dB: the gap this module is for.
"""

from __future__ import annotations

import numpy as np

RATE = 16000
PHONE_RATE = 8000
PEAK = 0.99
FRAME_S = 0.02
ACTIVE_DB = -35.0
DEFAULT_DRR_DB = 3.0
NOISE_KINDS = ("white", "pink", "babble", "hum")

DEFAULT_PLAN = {
    "reverb": {"p": 0.3, "rt60_s": [0.2, 0.8], "drr_db": [0.0, 10.0]},
    "noise": {"p": 0.5, "snr_db": [0.0, 20.0], "kinds": list(NOISE_KINDS)},
    "telephone": {"p": 0.2, "codecs": ["mulaw", "alaw"]},
}


# ----------------------------------------------------------------------------------------- helpers

def _as_audio(x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(f"expected mono 1-D audio, got shape {x.shape}")
    return np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)


def limit(y: np.ndarray) -> np.ndarray:
    """float32, NaN-free, scaled down (never clipped) to a peak of PEAK if it exceeds 1."""
    y = np.nan_to_num(np.asarray(y, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    peak = float(np.max(np.abs(y))) if y.size else 0.0
    if peak > 1.0:
        y = y * (PEAK / peak)
    return y.astype(np.float32)


def _frames_power(x: np.ndarray, frame: int) -> np.ndarray:
    n = max(1, len(x) // frame)
    x = np.pad(x, (0, max(0, n * frame - len(x))))[: n * frame]
    return np.mean(x.reshape(n, frame) ** 2, axis=1)


def active_mask(x: np.ndarray, rate: int = RATE) -> np.ndarray:
    """Per-sample boolean mask of the active (speech) frames of ``x`` (see the module docstring)."""
    x = _as_audio(x)
    frame = int(FRAME_S * rate)
    p = _frames_power(x, frame)
    ref = np.percentile(p, 95)
    if ref <= 0:
        return np.zeros(len(x), dtype=bool)
    act = p > ref * 10 ** (ACTIVE_DB / 10)
    mask = np.repeat(act, frame)
    if len(mask) < len(x):  # the final partial frame inherits the last frame's decision
        mask = np.concatenate([mask, np.full(len(x) - len(mask), act[-1])])
    return mask[: len(x)]


def active_power(x: np.ndarray, mask: np.ndarray) -> float:
    return float(np.mean(np.asarray(x, dtype=np.float64)[mask] ** 2)) if mask.any() else 0.0


def _shape(noise: np.ndarray, gain_of_freq) -> np.ndarray:
    """Filter ``noise`` in the FFT domain by a real amplitude response ``gain_of_freq(f_hz)``."""
    spec = np.fft.rfft(noise)
    f = np.fft.rfftfreq(len(noise), 1.0 / RATE)
    return np.fft.irfft(spec * gain_of_freq(f), n=len(noise))


def _pink(n: int, rng: np.random.Generator) -> np.ndarray:
    def g(f):
        out = 1.0 / np.sqrt(np.maximum(f, 20.0))
        out[0] = 0.0
        return out
    return _shape(rng.standard_normal(n), g)


def _ltas(x: np.ndarray, mask: np.ndarray, nfft: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """Long-term average power spectrum of ``x`` over its active part (Welch, Hann, 50% hop)."""
    xa = x[mask] if mask.any() else x
    if len(xa) < nfft:
        xa = np.pad(xa, (0, nfft - len(xa)))
    hop = nfft // 2
    win = np.hanning(nfft)
    starts = range(0, len(xa) - nfft + 1, hop)
    psd = np.mean([np.abs(np.fft.rfft(xa[s : s + nfft] * win)) ** 2 for s in starts], axis=0)
    return np.fft.rfftfreq(nfft, 1.0 / RATE), psd


def _speech_shaped(x: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    f_l, psd = _ltas(x, mask)
    amp = np.sqrt(psd)
    return _shape(rng.standard_normal(len(x)), lambda f: np.interp(f, f_l, amp))


def _babble(x: np.ndarray, others, rng: np.random.Generator, talkers: int) -> np.ndarray:
    n = len(x)
    picks = rng.permutation(len(others))[: max(1, talkers)]
    out = np.zeros(n)
    for i in picks:
        o = _as_audio(others[i])
        if not np.any(o):
            continue
        o = np.roll(o, int(rng.integers(len(o))))
        o = np.tile(o, n // len(o) + 1)[:n]
        tilt = rng.uniform(-0.3, 0.3)            # power slope: +-6 dB per decade
        corner = rng.uniform(2500.0, 7000.0)     # low-pass corner, 4th-order-like roll-off

        def g(f, tilt=tilt, corner=corner):
            return (np.maximum(f, 50.0) / 1000.0) ** tilt / np.sqrt(1.0 + (f / corner) ** 8)
        o = _shape(o, g)
        p = active_power(o, active_mask(o))
        if p <= 0:
            continue
        out += o / np.sqrt(p) * 10 ** (rng.uniform(-3.0, 3.0) / 20)
    return out


def _hum(n: int, rng: np.random.Generator) -> np.ndarray:
    f0 = float(rng.choice([50.0, 60.0]))
    t = np.arange(n) / RATE
    hum = sum(np.sin(2 * np.pi * f0 * h * t + rng.uniform(0, 2 * np.pi)) / h for h in range(1, 9))
    p = np.mean(hum ** 2)
    return hum + rng.standard_normal(n) * np.sqrt(p * 10 ** (-30 / 10))


# ----------------------------------------------------------------------------------- the transforms

def make_noise(x: np.ndarray, rng: np.random.Generator, kind: str = "white", others=None,
               talkers: int = 4) -> np.ndarray:
    """Unscaled noise of ``kind``, as long as ``x`` (float64)."""
    x = _as_audio(x)
    n = len(x)
    if n == 0:
        return np.zeros(0)
    if kind == "white":
        return rng.standard_normal(n)
    if kind == "pink":
        return _pink(n, rng)
    if kind == "babble":
        if others:
            b = _babble(x, others, rng, talkers)
            if np.any(b):
                return b
        return _speech_shaped(x, active_mask(x), rng)
    if kind == "hum":
        return _hum(n, rng)
    raise ValueError(f"unknown noise kind {kind!r}; expected one of {NOISE_KINDS}")


def add_noise(x, snr_db: float, rng: np.random.Generator, kind: str = "white", others=None,
              talkers: int = 4) -> np.ndarray:
    """``x`` plus noise of ``kind`` at ``snr_db`` (active speech power / noise power over the same
    active frames). ``others``: other utterances for babble. Returns float32, peak-limited."""
    x = _as_audio(x)
    if not len(x):
        return x.astype(np.float32)
    mask = active_mask(x)
    ps = active_power(x, mask)
    noise = make_noise(x, rng, kind, others=others, talkers=talkers)
    pn = active_power(noise, mask)
    if ps <= 0 or pn <= 0:
        return limit(x)
    noise *= np.sqrt(ps / (pn * 10 ** (snr_db / 10)))
    return limit(x + noise)


def room_ir(rt60_s: float, rng: np.random.Generator, drr_db: float | None = None,
            rate: int = RATE) -> np.ndarray:
    """Synthetic room impulse response: a unit direct path at 0, then exponentially decaying
    Gaussian noise (60 dB energy decay in ``rt60_s``), the tail scaled to the direct-to-reverberant
    energy ratio ``drr_db``. Length 1.5 x rt60."""
    if rt60_s <= 0:
        raise ValueError("rt60_s must be > 0")
    drr_db = DEFAULT_DRR_DB if drr_db is None else float(drr_db)
    n = max(2, int(round(1.5 * rt60_s * rate)))
    t = np.arange(1, n) / rate
    tail = rng.standard_normal(n - 1) * np.exp(-np.log(1000.0) * t / rt60_s)
    tail *= np.sqrt(10 ** (-drr_db / 10) / np.sum(tail ** 2))
    return np.concatenate([[1.0], tail])


def _fftconvolve(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    n = len(a) + len(b) - 1
    nfft = 1 << (n - 1).bit_length()
    return np.fft.irfft(np.fft.rfft(a, nfft) * np.fft.rfft(b, nfft), nfft)[:n]


def reverberate(x, rt60_s: float, rng: np.random.Generator, drr_db: float | None = None,
                keep_tail: bool = False) -> np.ndarray:
    """``x`` convolved with :func:`room_ir`, rescaled to the input's RMS, peak-limited, float32.
    Same length as ``x`` unless ``keep_tail``."""
    x = _as_audio(x)
    if not len(x):
        return x.astype(np.float32)
    y = _fftconvolve(x, room_ir(rt60_s, rng, drr_db))
    if not keep_tail:
        y = y[: len(x)]
    rms_in, rms_out = np.sqrt(np.mean(x ** 2)), np.sqrt(np.mean(y[: len(x)] ** 2))
    if rms_out > 0:
        y *= rms_in / rms_out
    return limit(y)


# --- G.711, after the reference C code (as in CPython's audioop.c) ---------------------------------

_SEG_UEND = np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF])
_SEG_AEND = np.array([0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF])
_ULAW_BIAS = 0x84
_ULAW_CLIP = 8159


def lin2ulaw(pcm: np.ndarray) -> np.ndarray:
    """int16 PCM -> 8-bit mu-law codes (uint8), G.711."""
    v = np.asarray(pcm, dtype=np.int16).astype(np.int32) >> 2        # 14-bit
    neg = v < 0
    mask = np.where(neg, 0x7F, 0xFF)
    v = np.minimum(np.where(neg, -v, v), _ULAW_CLIP) + (_ULAW_BIAS >> 2)
    seg = np.searchsorted(_SEG_UEND, v, side="left")                 # first seg with v <= end
    code = np.where(seg >= 8, 0x7F, (np.minimum(seg, 7) << 4) | ((v >> (np.minimum(seg, 7) + 1)) & 0xF))
    return (code ^ mask).astype(np.uint8)


def ulaw2lin(codes: np.ndarray) -> np.ndarray:
    """8-bit mu-law codes -> int16 PCM, G.711."""
    u = ~np.asarray(codes, dtype=np.uint8).astype(np.int32) & 0xFF
    t = (((u & 0xF) << 3) + _ULAW_BIAS) << ((u & 0x70) >> 4)
    return np.where(u & 0x80, _ULAW_BIAS - t, t - _ULAW_BIAS).astype(np.int16)


def lin2alaw(pcm: np.ndarray) -> np.ndarray:
    """int16 PCM -> 8-bit A-law codes (uint8), G.711."""
    v = np.asarray(pcm, dtype=np.int16).astype(np.int32) >> 3        # 13-bit
    neg = v < 0
    mask = np.where(neg, 0x55, 0xD5)
    v = np.where(neg, -v - 1, v)
    seg = np.searchsorted(_SEG_AEND, v, side="left")
    s = np.minimum(seg, 7)
    q = np.where(s < 2, v >> 1, v >> np.maximum(s, 1)) & 0xF
    code = np.where(seg >= 8, 0x7F, (s << 4) | q)
    return (code ^ mask).astype(np.uint8)


def alaw2lin(codes: np.ndarray) -> np.ndarray:
    """8-bit A-law codes -> int16 PCM, G.711."""
    a = np.asarray(codes, dtype=np.uint8).astype(np.int32) ^ 0x55
    t = (a & 0xF) << 4
    seg = (a & 0x70) >> 4
    t = np.where(seg == 0, t + 8, np.where(seg == 1, t + 0x108, (t + 0x108) << np.maximum(seg - 1, 0)))
    return np.where(a & 0x80, t, -t).astype(np.int16)


def _phone_band(x: np.ndarray, rate: int) -> np.ndarray:
    """G.712-like band-pass in the FFT domain: 1 in 300-3400 Hz, raised-cosine skirts down to
    zero at 250 Hz and 3600 Hz."""
    def g(f):
        lo = np.clip((f - 250.0) / 50.0, 0, 1)
        hi = np.clip((3600.0 - f) / 200.0, 0, 1)
        return (0.5 - 0.5 * np.cos(np.pi * lo)) * (0.5 - 0.5 * np.cos(np.pi * hi))
    f = np.fft.rfftfreq(len(x), 1.0 / rate)
    return np.fft.irfft(np.fft.rfft(x) * g(f), n=len(x))


def telephone(x, codec: str = "mulaw", rng: np.random.Generator | None = None) -> np.ndarray:
    """The narrowband phone path (see the module docstring): 16 kHz in, 16 kHz out, same length."""
    import soxr

    if codec not in ("mulaw", "alaw"):
        raise ValueError(f"unknown codec {codec!r}; expected 'mulaw' or 'alaw'")
    x = _as_audio(x)
    if not len(x):
        return x.astype(np.float32)
    nb = soxr.resample(x, RATE, PHONE_RATE, quality="VHQ")
    nb = _phone_band(nb, PHONE_RATE)
    pcm = np.clip(np.round(nb * 32768.0), -32768, 32767).astype(np.int16)
    if codec == "mulaw":
        pcm = ulaw2lin(lin2ulaw(pcm))
    else:
        pcm = alaw2lin(lin2alaw(pcm))
    nb = _phone_band(pcm.astype(np.float64) / 32768.0, PHONE_RATE)
    y = soxr.resample(nb, PHONE_RATE, RATE, quality="VHQ")
    y = np.pad(y, (0, max(0, len(x) - len(y))))[: len(x)]
    return limit(y)


# ------------------------------------------------------------------------------------ the sampler

def sample_plan(rng: np.random.Generator, plan: dict | None = None) -> dict:
    """Draw one chain from ``plan``: ``{step: params}`` for the steps that apply, in order
    reverb, noise, telephone. Every draw is made whether or not its step applies."""
    plan = DEFAULT_PLAN if plan is None else plan
    chosen: dict = {}
    r = plan.get("reverb")
    if r is not None:
        on = rng.random() < r.get("p", 0.0)
        rt60 = float(rng.uniform(*r.get("rt60_s", [0.2, 0.8])))
        drr = float(rng.uniform(*r.get("drr_db", [DEFAULT_DRR_DB, DEFAULT_DRR_DB])))
        if on:
            chosen["reverb"] = {"rt60_s": round(rt60, 4), "drr_db": round(drr, 3)}
    nz = plan.get("noise")
    if nz is not None:
        on = rng.random() < nz.get("p", 0.0)
        snr = float(rng.uniform(*nz.get("snr_db", [0.0, 20.0])))
        kinds = list(nz.get("kinds", NOISE_KINDS))
        kind = str(kinds[int(rng.integers(len(kinds)))])
        if on:
            chosen["noise"] = {"kind": kind, "snr_db": round(snr, 3)}
    tel = plan.get("telephone")
    if tel is not None:
        on = rng.random() < tel.get("p", 0.0)
        codecs = list(tel.get("codecs", ["mulaw"]))
        codec = str(codecs[int(rng.integers(len(codecs)))])
        if on:
            chosen["telephone"] = {"codec": codec}
    return chosen


def augment(x, rng: np.random.Generator, plan: dict | None = None, others=None):
    """Apply a chain sampled from ``plan`` (default :data:`DEFAULT_PLAN`) to ``x``.

    Returns ``(audio, applied)``: float32 audio of ``x``'s length, and the dict of applied steps
    with their drawn parameters (JSON-ready; ``{}`` when nothing applied). ``others``: utterances
    for babble noise."""
    chosen = sample_plan(rng, plan)
    y = limit(_as_audio(x))
    if "reverb" in chosen:
        y = reverberate(y, chosen["reverb"]["rt60_s"], rng, drr_db=chosen["reverb"]["drr_db"])
    if "noise" in chosen:
        y = add_noise(y, chosen["noise"]["snr_db"], rng, kind=chosen["noise"]["kind"], others=others)
    if "telephone" in chosen:
        y = telephone(y, chosen["telephone"]["codec"], rng)
    return y, chosen
