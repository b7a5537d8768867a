"""Streaming log-mel front end in numpy, equal to NeMo's ``FilterbankFeatures``.

NeMo's ``AudioToMelSpectrogramPreprocessor`` (eval mode, ``normalize: NA``) computes, per utterance:

1. pre-emphasis ``y[0] = x[0]``, ``y[n] = x[n] - preemph * x[n-1]``;
2. ``torch.stft(center=True, pad_mode="constant")``: the signal is zero-padded by ``n_fft // 2`` on
   both sides and framed every ``hop_length`` samples with a symmetric Hann window of
   ``win_length`` samples, itself zero-padded to ``n_fft`` (centred);
3. ``|X| ** mag_power``, a Slaney mel filterbank, ``log(x + guard)``;
4. ``len(x) // hop_length`` valid frames (the rest is masked).

Frame ``i`` therefore covers samples ``[i*hop - n_fft//2, i*hop + n_fft//2)``: it can be emitted as
soon as ``i*hop + n_fft//2`` samples have arrived (16 ms of look-ahead at 16 kHz). :class:`StreamingMel`
does exactly that, for packets of any size, and :meth:`StreamingMel.flush` emits the frames that
need the end-of-stream zero padding. Its output equals the offline :func:`log_mel` of the whole
signal, frame for frame.

No torch, no librosa: the filterbank is computed here from the settings in ``model.json``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

__all__ = ["MelConfig", "StreamingMel", "log_mel", "mel_filterbank"]


@dataclass(frozen=True)
class MelConfig:
    """The featurizer settings that ``model.json`` carries (NeMo names in comments)."""

    sample_rate: int = 16000
    n_fft: int = 512
    win_length: int = 400  # window_size * sample_rate
    hop_length: int = 160  # window_stride * sample_rate
    n_mels: int = 80  # features
    preemph: float = 0.97
    lowfreq: float = 0.0
    highfreq: float | None = None  # None: sample_rate / 2
    mag_power: float = 2.0
    log_guard: float = 2.0**-24  # log_zero_guard_value with log_zero_guard_type "add"
    window: str = "hann"

    @classmethod
    def from_dict(cls, d: dict) -> "MelConfig":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})

    def to_dict(self) -> dict:
        return asdict(self)


def _hz_to_mel(f: np.ndarray) -> np.ndarray:
    """Slaney's mel scale (librosa's default, ``htk=False``)."""
    f = np.asanyarray(f, dtype=np.float64)
    f_sp = 200.0 / 3
    mels = f / f_sp
    min_log_hz, min_log_mel, logstep = 1000.0, 1000.0 / f_sp, np.log(6.4) / 27.0
    log_t = f >= min_log_hz
    mels = np.where(log_t, min_log_mel + np.log(np.maximum(f, 1e-10) / min_log_hz) / logstep, mels)
    return mels


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    m = np.asanyarray(m, dtype=np.float64)
    f_sp = 200.0 / 3
    freqs = f_sp * m
    min_log_hz, min_log_mel, logstep = 1000.0, 1000.0 / f_sp, np.log(6.4) / 27.0
    return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), freqs)


def mel_filterbank(cfg: MelConfig) -> np.ndarray:
    """``[n_mels, n_fft//2 + 1]`` Slaney-normalised triangular filters, as ``librosa.filters.mel``."""
    fmax = cfg.highfreq if cfg.highfreq is not None else cfg.sample_rate / 2.0
    fftfreqs = np.linspace(0.0, cfg.sample_rate / 2.0, 1 + cfg.n_fft // 2)
    mel_f = _mel_to_hz(np.linspace(_hz_to_mel(cfg.lowfreq), _hz_to_mel(fmax), cfg.n_mels + 2))
    fdiff = np.diff(mel_f)
    ramps = mel_f[:, None] - fftfreqs[None, :]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_f[2 : cfg.n_mels + 2] - mel_f[: cfg.n_mels]))[:, None]
    return weights


def _window(cfg: MelConfig) -> np.ndarray:
    """Symmetric window of ``win_length``, zero-padded (centred) to ``n_fft``, as torch.stft does."""
    if cfg.window != "hann":
        raise ValueError(f"unsupported window {cfg.window!r} (only 'hann')")
    n = cfg.win_length
    w = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / (n - 1)) if n > 1 else np.ones(1)
    left = (cfg.n_fft - n) // 2
    out = np.zeros(cfg.n_fft)
    out[left : left + n] = w
    return out


class _Kernel:
    """Precomputed window and filterbank; turns framed, pre-emphasised samples into log-mels."""

    def __init__(self, cfg: MelConfig):
        self.cfg = cfg
        self.window = _window(cfg)
        self.fb = mel_filterbank(cfg)

    def frames(self, padded: np.ndarray, n: int) -> np.ndarray:
        """Log-mels ``[n_mels, n]`` of the first ``n`` frames of an already padded signal."""
        cfg = self.cfg
        if n <= 0:
            return np.zeros((cfg.n_mels, 0), dtype=np.float32)
        # the frames as a strided view of the signal: no index matrix, no copy before the window
        framed = np.lib.stride_tricks.sliding_window_view(padded[: (n - 1) * cfg.hop_length + cfg.n_fft], cfg.n_fft)
        spec = np.fft.rfft(framed[:: cfg.hop_length] * self.window, axis=-1)
        power = spec.real**2 + spec.imag**2
        if cfg.mag_power != 2.0:
            power = power ** (cfg.mag_power / 2.0)
        mel = power @ self.fb.T
        return np.log(mel + cfg.log_guard).T.astype(np.float32)


def _preemphasis(x: np.ndarray, coef: float, prev: float | None) -> np.ndarray:
    y = np.empty_like(x)
    if x.size == 0:
        return y
    y[1:] = x[1:] - coef * x[:-1]
    y[0] = x[0] if prev is None else x[0] - coef * prev
    return y


def log_mel(audio: np.ndarray, cfg: MelConfig = MelConfig()) -> np.ndarray:
    """Offline log-mel ``[n_mels, len(audio) // hop]`` of one utterance (float waveform in [-1, 1])."""
    x = np.asarray(audio, dtype=np.float64)
    y = _preemphasis(x, cfg.preemph, None) if cfg.preemph else x
    half = cfg.n_fft // 2
    padded = np.concatenate([np.zeros(half), y, np.zeros(half)])
    return _Kernel(cfg).frames(padded, len(x) // cfg.hop_length)


class StreamingMel:
    """Incremental log-mel of one stream: :meth:`accept` packets of any size, then :meth:`flush`.

    ``accept`` returns the frames that became computable (possibly none); ``flush`` returns the last
    frames, which need the end-of-stream zero padding, and closes the stream. The concatenation of
    everything returned equals :func:`log_mel` of the concatenated packets.
    """

    def __init__(self, cfg: MelConfig = MelConfig(), kernel: _Kernel | None = None):
        self.cfg = cfg
        self._k = kernel or _Kernel(cfg)
        half = cfg.n_fft // 2
        # Pre-emphasised samples, starting at the first sample of the next frame's window
        # (the stream starts with the n_fft//2 zeros of centre padding).
        self._buf = np.zeros(half, dtype=np.float64)
        self._prev: float | None = None  # last raw sample, for pre-emphasis across packets
        self._received = 0  # raw samples accepted
        self._emitted = 0  # frames emitted
        self._closed = False

    @property
    def frames_emitted(self) -> int:
        return self._emitted

    @property
    def samples_received(self) -> int:
        return self._received

    def accept(self, samples: np.ndarray) -> np.ndarray:
        """Add float samples; return the newly complete frames ``[n_mels, k]`` (float32)."""
        if self._closed:
            raise RuntimeError("stream already flushed")
        x = np.asarray(samples, dtype=np.float64).reshape(-1)
        if x.size:
            y = _preemphasis(x, self.cfg.preemph, self._prev) if self.cfg.preemph else x
            self._prev = float(x[-1])
            self._buf = np.concatenate([self._buf, y])
            self._received += x.size
        return self._emit(len(self._buf))

    def flush(self) -> np.ndarray:
        """End of stream: zero-pad and return the remaining valid frames."""
        if self._closed:
            return np.zeros((self.cfg.n_mels, 0), dtype=np.float32)
        self._closed = True
        self._buf = np.concatenate([self._buf, np.zeros(self.cfg.n_fft // 2)])
        total = self._received // self.cfg.hop_length
        return self._emit(len(self._buf), limit=total - self._emitted)

    def _emit(self, available: int, limit: int | None = None) -> np.ndarray:
        cfg = self.cfg
        n = (available - cfg.n_fft) // cfg.hop_length + 1 if available >= cfg.n_fft else 0
        if limit is not None:
            n = max(0, min(n, limit))
        if self._closed is False:
            # Never emit past len // hop frames (the rest is masked by NeMo).
            n = max(0, min(n, self._received // cfg.hop_length - self._emitted))
        out = self._k.frames(self._buf, n)
        if n:
            self._buf = self._buf[n * cfg.hop_length :]
            self._emitted += n
        return out
