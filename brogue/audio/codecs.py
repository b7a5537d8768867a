"""Client audio -> 16 kHz float32: decoding (PCM16, float32, mu-law, A-law) and streaming resampling.

:class:`AudioDecoder` takes raw bytes in any framing (a frame may end in the middle of a sample)
and returns float32 samples at the model's rate, resampled with soxr's streaming resampler, so a
stream cut into arbitrary frames gives the same samples as the whole stream at once.
"""

from __future__ import annotations

import numpy as np
import soxr

ENCODINGS = ("pcm16", "float32", "mulaw", "alaw")
SAMPLE_RATES = (8000, 16000, 22050, 44100, 48000)


class AudioFormatError(ValueError):
    """Audio the stream cannot accept; the message says why."""


def _mulaw_table() -> np.ndarray:
    u = ~np.arange(256, dtype=np.uint8)
    sign = (u & 0x80) != 0
    exponent = (u >> 4) & 0x07
    mantissa = u & 0x0F
    magnitude = ((mantissa.astype(np.int32) << 3) + 0x84) << exponent
    pcm = np.where(sign, 0x84 - magnitude, magnitude - 0x84)
    return (pcm / 32768.0).astype(np.float32)


def _alaw_table() -> np.ndarray:
    a = np.arange(256, dtype=np.uint8) ^ 0x55
    sign = (a & 0x80) != 0
    exponent = (a >> 4) & 0x07
    mantissa = (a & 0x0F).astype(np.int32)
    shift = np.maximum(exponent.astype(np.int32) - 1, 0)
    magnitude = np.where(exponent == 0, (mantissa << 4) + 8, ((mantissa << 4) + 0x108) << shift)
    pcm = np.where(sign, magnitude, -magnitude)
    return (pcm / 32768.0).astype(np.float32)


_TABLES = {"mulaw": _mulaw_table(), "alaw": _alaw_table()}
_WIDTH = {"pcm16": 2, "float32": 4, "mulaw": 1, "alaw": 1}


def decode(data: bytes, encoding: str) -> np.ndarray:
    """Whole samples of ``encoding`` (little-endian) -> float32 in [-1, 1]."""
    if encoding == "pcm16":
        return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0
    if encoding == "float32":
        x = np.frombuffer(data, dtype="<f4").astype(np.float32)
        if not np.isfinite(x).all():
            raise AudioFormatError("float32 audio contains NaN or Inf")
        return x
    if encoding in _TABLES:
        return _TABLES[encoding][np.frombuffer(data, dtype=np.uint8)]
    raise AudioFormatError(f"unsupported encoding {encoding!r}; use one of {', '.join(ENCODINGS)}")


class AudioDecoder:
    """Streaming decoder and resampler for one stream."""

    def __init__(self, encoding: str, sample_rate: int, target_rate: int = 16000):
        if encoding not in ENCODINGS:
            raise AudioFormatError(f"unsupported encoding {encoding!r}; use one of {', '.join(ENCODINGS)}")
        if sample_rate not in SAMPLE_RATES:
            raise AudioFormatError(f"unsupported sample rate {sample_rate} Hz; use one of "
                                   f"{', '.join(map(str, SAMPLE_RATES))}")
        self.encoding, self.sample_rate, self.target_rate = encoding, sample_rate, target_rate
        self._width = _WIDTH[encoding]
        self._partial = b""  # the bytes of a sample split across frames: kept for the next frame
        self.dropped_bytes = 0
        self._resampler = None if sample_rate == target_rate else \
            soxr.ResampleStream(sample_rate, target_rate, 1, dtype="float32", quality="HQ")
        self.samples_in = 0  # input samples decoded, at the input rate

    def feed(self, data: bytes) -> np.ndarray:
        """Decode ``data`` (any length) and return the new samples at ``target_rate``."""
        data = self._partial + bytes(data)
        whole = len(data) - len(data) % self._width
        self._partial = data[whole:]
        x = decode(data[:whole], self.encoding)
        self.samples_in += x.size
        return self._resample(x, last=False)

    def flush(self) -> np.ndarray:
        """End of stream: the resampler's tail. The bytes of a last, incomplete sample (a client that
        forwards audio in arbitrary byte blocks) are dropped, and counted in ``dropped_bytes``."""
        self.dropped_bytes = len(self._partial)
        self._partial = b""
        return self._resample(np.zeros(0, np.float32), last=True)

    def _resample(self, x: np.ndarray, last: bool) -> np.ndarray:
        if self._resampler is None:
            return x
        return self._resampler.resample_chunk(x, last=last).astype(np.float32, copy=False)
