"""What a transcription looks like in each OpenAI ``response_format``, and the text deltas of a stream.

Pure functions of the gateway's finals (:class:`~brogue.server.session.Result`): a segment is one
final (an endpointed utterance), its words are the final's words. No I/O here.

- ``json``: ``{"text": ...}``
- ``text``: the text and a newline
- ``verbose_json``: OpenAI's shape (task, language, duration, text, and ``segments`` and/or
  ``words`` as ``timestamp_granularities`` ask). Fields Whisper has and a CTC/RNNT model does not
  are filled so clients parse them: ``seek`` is the segment's start in 10 ms frames, ``tokens`` is
  empty, ``temperature`` 0, ``avg_logprob`` the mean log of the words' confidences,
  ``compression_ratio`` Whisper's (text bytes over zlib-compressed bytes), ``no_speech_prob`` 0
  (a final has words by construction).
- ``srt`` and ``vtt``: one cue per segment.

:class:`TextDeltas` turns the stream of results into ``transcript.text.delta`` texts whose
concatenation is the final text.
"""

from __future__ import annotations

import json
import math
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field

__all__ = ["FORMATS", "GRANULARITIES", "LANGUAGE_NAMES", "Segment", "TextDeltas", "render", "segments_of",
           "srt", "text_of", "timestamp", "verbose_json", "vtt"]

FORMATS = ("json", "text", "srt", "verbose_json", "vtt")
GRANULARITIES = ("segment", "word")
LANGUAGE_NAMES = {"en": "english", "de": "german", "es": "spanish", "fr": "french", "it": "italian",
                  "pt": "portuguese", "nl": "dutch", "ru": "russian", "zh": "chinese", "ja": "japanese",
                  "hi": "hindi"}  # verbose_json names the language in full, as Whisper does


@dataclass(frozen=True)
class Segment:
    """One final: its text, start and end (seconds from the start of the file) and words."""

    id: int
    start: float
    end: float
    text: str
    words: tuple = field(default=())  # brogue.server.utterance.Word: word, start, end, confidence


def segments_of(finals: Iterable) -> list[Segment]:
    """The segments of the gateway's finals (results of kind ``final``; others are skipped), numbered
    from 0; finals without text are dropped."""
    out = []
    for r in finals:
        if getattr(r, "kind", "final") != "final" or not r.transcript.strip():
            continue
        start = float(r.start)
        out.append(Segment(len(out), start, max(start, float(r.end)), r.transcript.strip(), tuple(r.words)))
    return out


def text_of(segments: Iterable[Segment]) -> str:
    """The transcript: the segments' texts joined by single spaces."""
    return " ".join(s.text for s in segments if s.text)


def timestamp(seconds: float, decimal: str = ",") -> str:
    """``HH:MM:SS,mmm`` (SRT; ``decimal="."`` for WebVTT), rounded to the millisecond; hours grow past 99."""
    ms = max(0, round(seconds * 1000))
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{decimal}{ms:03d}"


def _one_line(text: str) -> str:
    """Cue text on one line: a blank line would end the cue, and ``-->`` would read as a timing line."""
    return " ".join(text.split()).replace("-->", "->")


def srt(segments: Iterable[Segment]) -> str:
    """SubRip: numbered cues from 1. SRT has no escapes: the text is kept, on one line."""
    cues = [f"{i}\n{timestamp(s.start)} --> {timestamp(s.end)}\n{_one_line(s.text)}\n"
            for i, s in enumerate(segments, 1)]
    return "\n".join(cues)


def _vtt_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def vtt(segments: Iterable[Segment]) -> str:
    """WebVTT: the header, then one cue per segment; ``&``, ``<`` and ``>`` are escaped."""
    cues = [f"{timestamp(s.start, '.')} --> {timestamp(s.end, '.')}\n{_vtt_escape(_one_line(s.text))}\n"
            for s in segments]
    return "WEBVTT\n\n" + "\n".join(cues)


def _avg_logprob(seg: Segment) -> float:
    confs = [w.confidence for w in seg.words if w.confidence > 0]
    if not confs:
        return 0.0
    return round(math.fsum(math.log(max(c, 1e-6)) for c in confs) / len(confs), 4)


def _compression_ratio(text: str) -> float:
    data = text.encode()
    return round(len(data) / len(zlib.compress(data)), 4) if data else 0.0


def verbose_json(segments: list[Segment], *, duration: float, language: str = "en",
                 granularities: Iterable[str] = ("segment",)) -> dict:
    """OpenAI's ``verbose_json`` object (see the module docstring)."""
    grans = set(granularities) or {"segment"}
    out = {"task": "transcribe", "language": LANGUAGE_NAMES.get(language, language),
           "duration": round(float(duration), 3), "text": text_of(segments)}
    if "segment" in grans:
        out["segments"] = [{"id": s.id, "seek": round(s.start * 100), "start": round(s.start, 3),
                            "end": round(s.end, 3), "text": s.text, "tokens": [], "temperature": 0.0,
                            "avg_logprob": _avg_logprob(s), "compression_ratio": _compression_ratio(s.text),
                            "no_speech_prob": 0.0} for s in segments]
    if "word" in grans:
        out["words"] = [{"word": w.word, "start": round(w.start, 3), "end": round(w.end, 3)}
                        for s in segments for w in s.words]
    return out


def render(fmt: str, segments: list[Segment], *, duration: float, language: str = "en",
           granularities: Iterable[str] = ()) -> tuple[str, bytes]:
    """``(content type, body)`` of ``segments`` in response format ``fmt`` (one of :data:`FORMATS`)."""
    if fmt == "json":
        return "application/json", json.dumps({"text": text_of(segments)}).encode()
    if fmt == "verbose_json":
        body = verbose_json(segments, duration=duration, language=language, granularities=granularities)
        return "application/json", json.dumps(body).encode()
    if fmt == "text":
        return "text/plain; charset=utf-8", (text_of(segments) + "\n").encode()
    if fmt == "srt":
        return "text/plain; charset=utf-8", srt(segments).encode()
    if fmt == "vtt":
        return "text/vtt; charset=utf-8", vtt(segments).encode()
    raise ValueError(f"unknown response format {fmt!r}")


class TextDeltas:
    """The ``transcript.text.delta`` texts of a stream of results, whose concatenation is
    :func:`text_of` the finals (the ``transcript.text.done`` text).

    A final sends what its utterance has not sent yet. With ``early=True`` a partial also sends its
    done words (all but the last, which may still grow): decoders only append tokens
    (:mod:`brogue.server.utterance`), so those never change. Utterances are joined by one space,
    sent at the head of the next utterance's first delta."""

    def __init__(self, early: bool = True):
        self.early = early
        self.parts: list[str] = []  # the finals' texts
        self._sent = ""  # what the current utterance has sent (without the separator)
        self._started = False  # some text was sent: the next utterance starts with a space

    def feed(self, result) -> str:
        """The delta for ``result`` (a partial or a final); ``""`` when there is nothing new."""
        text = result.transcript.strip()
        if result.kind == "final":
            if text:
                self.parts.append(text)
            new = text[len(self._sent):] if text.startswith(self._sent) else ""
            delta = self._emit(new)
            self._sent = ""
            return delta
        if not self.early:
            return ""
        cut = text.rfind(" ")
        done = text[:cut].rstrip() if cut > 0 else ""  # the words before the open one
        if len(done) <= len(self._sent) or not done.startswith(self._sent):
            return ""
        delta = self._emit(done[len(self._sent):])
        self._sent = done
        return delta

    def _emit(self, new: str) -> str:
        if not new:
            return ""
        head = " " if self._started and not self._sent else ""
        self._started = True
        return head + new

    @property
    def text(self) -> str:
        return " ".join(self.parts)
