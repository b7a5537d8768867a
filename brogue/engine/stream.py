"""The state of one stream inside the engine, and how its audio becomes encoder chunks.

NeMo's ``CacheAwareStreamingAudioBuffer`` cuts the log-mel of an utterance into encoder chunks:

- the first chunk is ``chunk_size[0]`` frames, with ``pre_encode_cache_size[0]`` (zero) frames of
  pre-encode context and nothing dropped after subsampling (the "first" graph);
- each later chunk is ``pre_encode_cache_size[1]`` frames of already-seen context followed by
  ``shift_size[1]`` new frames (the "steady" graph, which drops ``drop_extra_pre_encoded`` frames);
- at the end, a shorter last chunk is encoded if it holds at least ``sampling_frames`` new frames.

Only the ``len // hop`` valid frames are used. (NeMo's ``CacheAwareStreamingAudioBuffer.append_audio``
also feeds the one extra STFT frame that its preprocessor masks to ``pad_value``; through chunk
attention that frame changes the whole last chunk, so NeMo's streaming output then differs from its
offline output. Brogue streams what offline decoding sees.)

:class:`StreamState` does the same incrementally, as audio arrives: :meth:`StreamState.next_chunk`
returns the next chunk once enough frames exist (or the stream has ended), so that the chunks, and
therefore the tokens, equal NeMo's for the whole utterance.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from brogue.audio.mel import StreamingMel

from .metadata import Latency


@dataclass
class Chunk:
    """One encoder input row: ``pad`` zero frames of missing pre-encode context, then ``features
    [n_mels, T]`` (a view of the stream's frames, valid until :meth:`StreamState.advance`), and
    whether it uses the first-chunk graph."""

    features: np.ndarray
    pad: int
    first: bool
    final: bool
    new_frames: int  # frames of new audio in ``features`` (the rest is pre-encode context)


@dataclass
class StreamState:
    """Everything the engine keeps for one stream between calls.

    The encoder caches live in the engine's state pool, in row ``row`` (-1 once released).
    Decoder state: ``last_token`` (CTC: the last frame's argmax, for collapsing repeats across
    chunks; RNNT: the last emitted token, blank at start) and, for RNNT, the LSTM ``h``/``c`` and the
    prediction-network output ``dec_out`` for the current state; under LM beam search, ``beam``
    (:class:`~brogue.engine.beam.BeamState`) holds the hypotheses not yet committed.
    """

    stream_id: object
    latency: Latency
    mel: StreamingMel
    slot: int
    row: int = -1
    last_token: int = -1
    h: np.ndarray | None = None
    c: np.ndarray | None = None
    dec_out: np.ndarray | None = None
    frames: np.ndarray = field(default=None)  # mel frames not yet consumed, plus pre-encode context
    consumed: int = 0  # mel frames already encoded (not counting context)
    chunks_done: int = 0
    frames_out: int = 0  # encoder frames produced so far (for token times)
    ended: bool = False  # no more audio will come
    finished: bool = False  # the final chunk has been encoded
    last_active: float = field(default_factory=time.monotonic)
    tokens: list[int] = field(default_factory=list)
    beam: object = None  # a BeamState under LM beam search (CTC), until the stream's last chunk
    booster: object = None  # greedy decoding with boosted phrases: a context_graph.Booster

    def __post_init__(self):
        if self.frames is None:
            self.frames = np.zeros((self.mel.cfg.n_mels, 0), dtype=np.float32)

    def add_audio(self, samples: np.ndarray, end: bool = False) -> None:
        """Feed float samples (model rate); ``end`` closes the stream after them."""
        if self.ended:
            raise RuntimeError(f"stream {self.stream_id}: audio after end of stream")
        new = [self.mel.accept(samples)] if len(samples) else []
        if end:
            new.append(self.mel.flush())
            self.ended = True
        if new:
            self.frames = np.concatenate([self.frames, *new], axis=1)
        self.last_active = time.monotonic()

    def _context(self) -> int:
        """Frames of pre-encode context kept at the head of ``frames`` (none before the first chunk)."""
        return 0 if self.chunks_done == 0 else min(self.latency.pre_encode_cache_size[1], self.consumed)

    def next_chunk(self) -> Chunk | None:
        """The next encoder chunk, or None until enough audio arrives (or the stream is done)."""
        if self.finished:
            return None
        lat = self.latency
        first = self.chunks_done == 0
        ctx = self._context()
        new = self.frames.shape[1] - ctx
        size = lat.chunk_size[0] if first else lat.shift_size[1]
        if new > size or (new == size and not self.ended):
            take, final = size, False
        elif self.ended:
            take, final = new, True  # the last chunk (full or short)
            if take < lat.sampling_frames[0 if first else 1]:
                self.finished = True  # NeMo drops a tail too short to give one output frame
                return None
        else:
            return None
        pad = max(0, lat.pre_encode_cache_size[0 if first else 1] - ctx)
        return Chunk(features=self.frames[:, : ctx + take], pad=pad, first=first, final=final, new_frames=take)

    def advance(self, chunk: Chunk) -> None:
        """Drop the frames that ``chunk`` consumed, keeping the pre-encode context for the next one."""
        ctx = self._context()
        self.consumed += chunk.new_frames
        self.chunks_done += 1
        keep = min(self.latency.pre_encode_cache_size[1], self.consumed)
        self.frames = self.frames[:, ctx + chunk.new_frames - keep :]
        if chunk.final:
            self.finished = True
