"""The numpy streaming front end (brogue.audio.mel) against NeMo's own preprocessor.

NeMo's ``AudioToMelSpectrogramPreprocessor`` (eval mode, ``normalize="NA"``, no dither) is the
reference: ``output[0, :, :length]``. The numpy code must reproduce it offline (``log_mel``) and
incrementally (``StreamingMel``, fed packets of any size), and its filterbank must be NeMo's.

Tests marked ``nemo`` import NeMo (about 10 s, once per module); the others are numpy only.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from brogue.audio.mel import MelConfig, StreamingMel, log_mel, mel_filterbank

# NeMo computes in float32; the numpy front end in float64. Observed worst case ~8e-5 (a pure
# sine, whose out-of-band mel bins are tiny); typical 4e-5.
NEMO_TOL = 1e-4
DEFAULT_NEMO = dict(sample_rate=16000, normalize="NA", window_size=0.025, window_stride=0.01, n_fft=512,
                    features=80, pad_to=0, dither=0.0)

# Other featurizer settings: NeMo kwargs and the MelConfig that should be equal to them.
OTHER_SETTINGS = {
    "8k_256fft_64mel_no_preemph": (
        dict(sample_rate=8000, normalize="NA", window_size=0.025, window_stride=0.01, n_fft=256,
             features=64, pad_to=0, dither=0.0, preemph=None),
        MelConfig(sample_rate=8000, n_fft=256, win_length=200, hop_length=80, n_mels=64, preemph=None),
    ),
    "16k_64mel_20ms_window": (
        dict(sample_rate=16000, normalize="NA", window_size=0.02, window_stride=0.01, n_fft=512,
             features=64, pad_to=0, dither=0.0),
        MelConfig(sample_rate=16000, n_fft=512, win_length=320, hop_length=160, n_mels=64),
    ),
    "16k_band_limited_magnitude": (
        dict(sample_rate=16000, normalize="NA", window_size=0.025, window_stride=0.0125, n_fft=512,
             features=40, pad_to=0, dither=0.0, lowfreq=60, highfreq=7600, mag_power=1.0, preemph=0.9),
        MelConfig(sample_rate=16000, n_fft=512, win_length=400, hop_length=200, n_mels=40, preemph=0.9,
                  lowfreq=60.0, highfreq=7600.0, mag_power=1.0),
    ),
}


def make_preprocessor(**kwargs):
    from nemo.collections.asr.modules import AudioToMelSpectrogramPreprocessor

    return AudioToMelSpectrogramPreprocessor(**kwargs).eval()


def nemo_log_mel(preprocessor, audio: np.ndarray) -> np.ndarray:
    import torch

    x = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))[None]
    with torch.no_grad():
        out, length = preprocessor(input_signal=x, length=torch.tensor([len(audio)]))
    return out[0, :, : int(length[0])].numpy()


def stream(audio: np.ndarray, sizes, cfg: MelConfig = MelConfig()) -> tuple[np.ndarray, StreamingMel]:
    """Feed ``audio`` in packets of ``sizes`` (the rest in one last packet), then flush."""
    s = StreamingMel(cfg)
    outs, pos = [], 0
    for k in sizes:
        out = s.accept(audio[pos : pos + k])
        assert out.dtype == np.float32 and out.shape[0] == cfg.n_mels
        outs.append(out)
        pos += k
    outs.append(s.accept(audio[pos:]))
    outs.append(s.flush())
    return np.concatenate(outs, axis=1), s


def signal(kind: str, n: int, seed: int = 0, sample_rate: int = 16000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "noise":
        x = 0.1 * rng.standard_normal(n)
    elif kind == "silence":
        x = np.zeros(n)
    elif kind == "clipped":  # loud noise hard-clipped at full scale
        x = np.clip(4.0 * rng.standard_normal(n), -1.0, 1.0)
    elif kind == "speechlike":  # amplitude-modulated harmonics plus a little noise, with a silent gap
        t = np.arange(n) / sample_rate
        x = sum(0.2 / h * np.sin(2 * np.pi * 140 * h * t) for h in range(1, 8))
        x = x * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t)) + 0.01 * rng.standard_normal(n)
        x[n // 3 : n // 2] = 0.0
    else:
        raise ValueError(kind)
    return x.astype(np.float32)


@pytest.fixture(scope="module")
def nemo_pre():
    return make_preprocessor(**DEFAULT_NEMO)


# NeMo's float32 rounding (mainly of its float32 Hann window) is amplified in mel bins of very low
# energy. With a 320-sample window and 64 mels, the lowest bin of pre-emphasised noise holds ~5e-7,
# and NeMo itself is 9e-5 away from a float64 torch.stft of its own window and filterbank there
# (measured); the numpy front end is 1.4e-4 away from NeMo. So that setting gets 2e-4.
SETTING_TOL = {"16k_64mel_20ms_window": 2e-4}


def assert_close_to_nemo(ours: np.ndarray, ref: np.ndarray, what: str, tol: float = NEMO_TOL) -> None:
    assert ours.shape == ref.shape, f"{what}: shape {ours.shape} vs NeMo {ref.shape}"
    assert np.isfinite(ours).all(), f"{what}: non-finite values"
    if ref.size:
        err = float(np.abs(ours - ref).max())
        assert err <= tol, f"{what}: max |numpy - NeMo| = {err:.2e} > {tol}"


# ---------------------------------------------------------------------------------------------
# Offline against NeMo


@pytest.mark.nemo
@pytest.mark.parametrize("n", [300, 399, 400, 1000, 1599, 16000, 16123, 24000 + 37])
def test_offline_matches_nemo_noise(nemo_pre, n):
    x = signal("noise", n, seed=n)
    ours = log_mel(x)
    assert ours.shape == (80, n // 160)
    assert_close_to_nemo(ours, nemo_log_mel(nemo_pre, x), f"noise, {n} samples")


@pytest.mark.nemo
@pytest.mark.parametrize("kind", ["silence", "clipped", "speechlike"])
@pytest.mark.parametrize("n", [300, 8000, 12345])
def test_offline_matches_nemo_signals(nemo_pre, kind, n):
    x = signal(kind, n, seed=7)
    ours = log_mel(x)
    ref = nemo_log_mel(nemo_pre, x)
    assert_close_to_nemo(ours, ref, f"{kind}, {n} samples")
    if kind == "silence":  # log of the guard value, exactly as NeMo
        np.testing.assert_array_equal(ours, np.float32(np.log(2.0**-24)))
        np.testing.assert_array_equal(ref, ours)


@pytest.mark.nemo
def test_shorter_than_one_hop_gives_no_frames(nemo_pre):
    x = signal("noise", 159)
    assert log_mel(x).shape == (80, 0)
    assert nemo_log_mel(nemo_pre, x).shape == (80, 0)
    out, s = stream(x, [100, 0, 59])
    assert out.shape == (80, 0) and s.frames_emitted == 0


@pytest.mark.nemo
def test_filterbank_matches_nemo(nemo_pre):
    ref = nemo_pre.featurizer.fb[0].numpy().astype(np.float64)
    ours = mel_filterbank(MelConfig())
    assert ours.shape == ref.shape == (80, 257)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-6)


@pytest.mark.nemo
@pytest.mark.parametrize("name", sorted(OTHER_SETTINGS))
def test_other_settings_match_nemo(name):
    kwargs, cfg = OTHER_SETTINGS[name]
    pre = make_preprocessor(**kwargs)
    np.testing.assert_allclose(mel_filterbank(cfg), pre.featurizer.fb[0].numpy(), rtol=0, atol=1e-6,
                               err_msg=f"{name}: filterbank")
    sr = kwargs["sample_rate"]
    for kind, n in [("noise", sr + 123), ("clipped", 777), ("speechlike", sr // 2 + 5), ("silence", 1000)]:
        x = signal(kind, n, seed=n, sample_rate=sr)
        ours = log_mel(x, cfg)
        assert ours.shape == (cfg.n_mels, n // cfg.hop_length)
        assert_close_to_nemo(ours, nemo_log_mel(pre, x), f"{name}, {kind}, {n} samples",
                             SETTING_TOL.get(name, NEMO_TOL))
        streamed, _ = stream(x, [1, 0, 333, cfg.hop_length, 2 * cfg.n_fft + 1], cfg)
        np.testing.assert_allclose(streamed, ours, rtol=1e-6, atol=1e-6, err_msg=f"{name}, {kind}: streaming")


# ---------------------------------------------------------------------------------------------
# Streaming


packet_sizes = st.lists(st.one_of(st.sampled_from([0, 1, 159, 160, 161, 256]), st.integers(0, 1500)),
                        max_size=25)


@pytest.mark.nemo
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sizes=packet_sizes, tail=st.integers(1, 400), seed=st.integers(0, 2**32 - 1),
       kind=st.sampled_from(["noise", "clipped", "speechlike", "silence"]))
def test_streaming_equals_offline_and_nemo(nemo_pre, sizes, tail, seed, kind):
    x = signal(kind, sum(sizes) + tail, seed=seed)
    got, s = stream(x, sizes)
    ref = log_mel(x)
    assert got.shape == ref.shape == (80, len(x) // 160)
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-6, err_msg="streaming != offline log_mel")
    assert s.frames_emitted == len(x) // 160 and s.samples_received == len(x)
    assert_close_to_nemo(got, nemo_log_mel(nemo_pre, x), f"streaming, {kind}, packets {sizes} + {tail}")


@settings(max_examples=30, deadline=None)
@given(sizes=packet_sizes, seed=st.integers(0, 2**32 - 1))
def test_streaming_emits_each_frame_as_soon_as_computable(sizes, seed):
    """After each packet, exactly the frames whose window (and look-ahead) has arrived are out."""
    cfg = MelConfig()
    x = signal("noise", sum(sizes), seed=seed)
    s, received = StreamingMel(cfg), 0
    for k in sizes:
        s.accept(x[received : received + k])
        received += k
        half = cfg.n_fft // 2  # frame i needs samples up to i * hop + half
        computable = (received - half) // cfg.hop_length + 1 if received >= half else 0
        assert s.frames_emitted == min(computable, received // cfg.hop_length), (received, s.frames_emitted)
    s.flush()
    assert s.frames_emitted == received // cfg.hop_length


@pytest.mark.parametrize("n", [0, 1, 159, 160, 161, 319, 320, 16000, 16001, 16159])
def test_frame_count_is_len_over_hop(n):
    x = signal("noise", n, seed=n)
    assert log_mel(x).shape == (80, n // 160)
    out, s = stream(x, [n // 3, 1, 0])
    assert out.shape == (80, n // 160)
    assert s.frames_emitted == n // 160
    cfg8 = OTHER_SETTINGS["8k_256fft_64mel_no_preemph"][1]
    assert log_mel(x, cfg8).shape == (64, n // 80)


def test_accept_after_flush_raises():
    s = StreamingMel()
    first = s.accept(signal("noise", 1000))
    last = s.flush()
    assert first.shape[1] + last.shape[1] == 1000 // 160 == 6
    assert s.flush().shape == (80, 0)  # a second flush is a no-op
    with pytest.raises(RuntimeError, match="flushed"):
        s.accept(np.zeros(10, np.float32))
    with pytest.raises(RuntimeError, match="flushed"):
        s.accept(np.zeros(0, np.float32))


def test_streaming_one_sample_at_a_time_equals_offline():
    x = signal("speechlike", 2000, seed=3)
    got, _ = stream(x, [1] * len(x))
    np.testing.assert_allclose(got, log_mel(x), rtol=1e-6, atol=1e-6)
