"""The I/O-free stream session: audio bytes and controls in, model chunks and result events out.

Both front ends (WebSocket, Riva gRPC) are thin adapters over :class:`StreamSession`, so they
behave the same and the logic is tested without sockets:

- :meth:`StreamSession.feed_audio` decodes and resamples client audio (:mod:`brogue.audio.codecs`)
  and returns the chunks to send to ``asr_streaming``, each one steady chunk of model audio;
- :meth:`StreamSession.end_audio` returns the last (short) chunk;
- :meth:`StreamSession.on_reply` takes the model's reply for a chunk and returns result events:
  partials while an utterance grows, a final when the endpointer (Riva's knobs) ends it;
- :meth:`StreamSession.force_endpoint` ends the current utterance now (a client "flush");
- :meth:`StreamSession.on_end` returns the last final once the model's last reply is in.

Transcripts and words are built as tokens arrive (:mod:`brogue.server.utterance`): a reply costs
work in proportion to its new tokens, not to the length of the utterance.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from brogue.audio.codecs import AudioDecoder
from brogue.engine.vocab import Detokenizer

from .endpointing import EndpointingConfig, Endpointer
from .utterance import Utterance, Word

__all__ = ["ModelInfo", "Result", "SessionConfig", "StreamSession", "Word"]


@dataclass(frozen=True)
class SessionConfig:
    """What a client chose for its stream (validated by the front end that parsed it)."""

    sample_rate: int = 16000
    encoding: str = "pcm16"
    interim_results: bool = True
    endpointing: EndpointingConfig = EndpointingConfig()
    latency: str | None = None
    boost: tuple = ()  # brogue.boosting.BoostPhrase: the request's phrases, merged with the tenant's


@dataclass(frozen=True)
class ModelInfo:
    """What the session needs to know of the served model (from its model.json)."""

    tokens: list
    vocab_kind: str
    frame_seconds: float
    chunk_samples: int  # samples of one steady chunk at 16 kHz
    sample_rate: int = 16000

    @classmethod
    def from_meta(cls, meta, latency: str | None = None) -> "ModelInfo":
        lat = meta.latency(latency)
        return cls(meta.tokens, meta.vocab_kind, meta.frame_seconds, lat.shift_size[1] * meta.mel.hop_length,
                   meta.sample_rate)


@dataclass
class Result:
    """A partial or final transcript of one utterance."""

    kind: str  # "partial" | "final"
    utterance_id: int
    transcript: str
    words: list[Word] = field(default_factory=list)
    start: float = 0.0
    end: float = 0.0
    stable: bool = False  # partial only: the endpointer's early end-of-utterance hint fired
    confidence: float = 0.0  # the mean confidence of the words


class StreamSession:
    def __init__(self, config: SessionConfig, model: ModelInfo):
        self.config = config
        self.model = model
        self.detok = Detokenizer(model.tokens, model.vocab_kind)
        self.decoder = AudioDecoder(config.encoding, config.sample_rate, model.sample_rate)
        self.endpointer = Endpointer(config.endpointing, model.frame_seconds * 1000)
        self._pending = np.zeros(0, np.float32)
        self.utterance = Utterance(self.detok, model.frame_seconds)
        self.utterance_id = 0
        self.frames_done = 0
        self.audio_seconds = 0.0

    # -- audio in, chunks out --------------------------------------------------------------------

    def feed_audio(self, data: bytes) -> list[np.ndarray]:
        """Client bytes -> zero or more full chunks for the model."""
        x = self.decoder.feed(data)
        self._pending = np.concatenate([self._pending, x]) if self._pending.size else x
        n = self.model.chunk_samples
        k = self._pending.size // n
        chunks = [self._pending[i * n:(i + 1) * n] for i in range(k)]
        self._pending = self._pending[k * n:]
        self.audio_seconds += x.size / self.model.sample_rate
        return chunks

    def end_audio(self) -> np.ndarray:
        """End of the client's audio: the remaining samples (maybe empty), to send with END."""
        tail = self.decoder.flush()
        last = np.concatenate([self._pending, tail])
        self._pending = np.zeros(0, np.float32)
        self.audio_seconds += tail.size / self.model.sample_rate
        return last

    # -- model replies in, results out -----------------------------------------------------------

    def on_reply(self, tokens, times, confidences, blank_probs) -> list[Result]:
        """The model's reply to one chunk -> result events."""
        start_frame = self.frames_done
        self.frames_done += len(blank_probs)
        events: list[Result] = []
        end = self.endpointer.update(blank_probs)
        if end is not None:
            cut = (start_frame + end + 1) * self.model.frame_seconds
            k = next((i for i, t in enumerate(times) if t >= cut), len(times))
            self.utterance.add(tokens[:k], times[:k], confidences[:k])
            tokens, times, confidences = tokens[k:], times[k:], confidences[k:]
            if self.utterance:
                events.append(self._result("final", end_time=cut))
            self._next_utterance()
        self.utterance.add(tokens, times, confidences)
        if self.utterance and self.config.interim_results and (len(tokens) or events):
            events.append(self._result("partial", stable=self.endpointer.eou_hint))
        return events

    def force_endpoint(self) -> list[Result]:
        """Finalize the current utterance now (client flush)."""
        events = [self._result("final")] if self.utterance else []
        self._next_utterance()
        return events

    def on_end(self) -> list[Result]:
        """The stream's last reply has been handled: the last final, if any."""
        return self.force_endpoint()

    # -- internals -------------------------------------------------------------------------------

    def _next_utterance(self) -> None:
        if self.utterance:
            self.utterance_id += 1
        self.utterance = Utterance(self.detok, self.model.frame_seconds)
        self.endpointer.reset()

    def _result(self, kind: str, stable: bool = False, end_time: float | None = None) -> Result:
        u = self.utterance
        end = end_time if end_time is not None else u.end()
        return Result(kind, self.utterance_id, u.transcript(), u.all_words(), round(u.start, 3), round(end, 3),
                      stable, round(u.confidence(), 4))
