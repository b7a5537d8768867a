"""An uploaded audio file, decoded block by block into the model's audio: mono float32 at its rate.

``soundfile`` (libsndfile) reads WAV, FLAC, OGG (Vorbis, Opus), MP3, AIFF and more from the
spooled upload a block at a time; several channels are averaged to one (a call recording with one
speaker per channel should be sent one channel per request); other rates are resampled with soxr's
streaming resampler at the quality :mod:`brogue.audio.codecs` uses, so the whole file never sits
in memory, whatever its length. Reads run in a worker thread: decoding an MP3 block is CPU work
the event loop should not wait on.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import numpy as np
import soundfile as sf
import soxr

from brogue.errors import ErrorCode

from ..gateway import StreamError
from .errors import ApiError

__all__ = ["AudioFile", "BLOCK_SECONDS"]

BLOCK_SECONDS = 2.0  # decoded per read; the stream loop cuts it into the model's chunks


class AudioFile:
    """``AudioFile(fileobj)``: ApiError (400, ``bad_audio``) when it is not audio soundfile can read."""

    def __init__(self, fileobj, filename: str = ""):
        try:
            self.sf = sf.SoundFile(fileobj)
        except Exception as e:  # noqa: BLE001 - libsndfile says "Format not recognised", "unknown format", ...
            name = f" {filename!r}" if filename else ""
            why = getattr(e, "error_string", None) or str(e)  # libsndfile's reason, without the file object
            raise ApiError(ErrorCode.BAD_AUDIO, f"could not decode the file{name} as audio ({why.strip()}); send "
                                                "WAV, FLAC, OGG (Vorbis/Opus) or MP3", param="file") from None
        if self.sf.samplerate <= 0 or self.sf.channels <= 0:
            raise ApiError(ErrorCode.BAD_AUDIO, "the file has no audio (no channels or sample rate)", param="file")
        self.rate, self.channels = self.sf.samplerate, self.sf.channels

    @property
    def duration(self) -> float:
        """Seconds, from the file's header (for MP3, libsndfile's estimate)."""
        return self.sf.frames / self.rate if self.sf.frames > 0 else 0.0

    def _read(self, frames: int) -> np.ndarray:
        try:
            x = self.sf.read(frames, dtype="float32", always_2d=True)
        except Exception as e:  # noqa: BLE001 - a corrupt block
            why = getattr(e, "error_string", None) or str(e)
            raise StreamError(ErrorCode.BAD_AUDIO, f"the audio could not be decoded past "
                                                   f"{self.sf.tell() / self.rate:.1f} s: {why}") from None
        return x.mean(axis=1, dtype=np.float32) if x.shape[1] > 1 else x[:, 0]

    async def blocks(self, target_rate: int) -> AsyncIterator[bytes]:
        """The audio as little-endian float32 bytes at ``target_rate``, a block at a time."""
        resampler = None if self.rate == target_rate else \
            soxr.ResampleStream(self.rate, target_rate, 1, dtype="float32", quality="HQ")
        frames = max(1, int(BLOCK_SECONDS * self.rate))
        while True:
            x = await asyncio.to_thread(self._read, frames)
            last = x.size < frames
            if resampler is not None:
                x = resampler.resample_chunk(x, last=last)
            if x.size:
                yield np.ascontiguousarray(x, dtype="<f4").tobytes()
            if last:
                return

    def close(self) -> None:
        self.sf.close()
