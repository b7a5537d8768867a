"""One utterance's transcript and words, built as tokens arrive, at a cost per token, not per reply.

Decoders only append tokens (greedy CTC and RNNT emit final tokens; the LM beam search emits the
tokens all its beams agree on), so every word but the last is done once the next word starts.
:class:`Utterance` keeps the done words and their text, and rebuilds only the open (last) word when
asked for a result: the work of a reply grows with its new tokens and the open word, never with the
length of the utterance. :attr:`Utterance.work` counts the tokens touched, so tests can check that.

A word starts at a word-start token (a space for character vocabularies, ``▁`` for SentencePiece).
It has the start time of its first spoken token (not a bare space), the end time of the frame
after its last token, and the mean confidence of its spoken tokens. The transcript is
:meth:`~brogue.engine.vocab.Detokenizer.decode` of all the utterance's tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from brogue.engine.vocab import Detokenizer


@dataclass(frozen=True, slots=True)
class Word:
    word: str
    start: float
    end: float
    confidence: float

    def as_dict(self) -> dict:
        return {"word": self.word, "start": self.start, "end": self.end, "confidence": self.confidence}


class Utterance:
    """Tokens of one utterance in, transcript and words out (see the module docstring)."""

    def __init__(self, detok: Detokenizer, frame_seconds: float):
        self.detok, self.frame_seconds = detok, frame_seconds
        self.start: float | None = None  # time of the first token
        self.words: list[Word] = []  # the done words
        self._text = ""  # text of the done words' tokens, not stripped
        self._conf_sum = 0.0  # sum of the done words' confidences
        self._open: list[tuple[int, float, float]] = []  # (token, time, confidence) of the last word
        self._open_word: Word | None = None  # cache of the open word (None: stale or no text)
        self._open_fresh = False
        self.work = 0  # tokens touched, for the cost tests

    def __bool__(self) -> bool:
        return self.start is not None

    def add(self, tokens, times, confidences) -> None:
        """Append decoded tokens (with their start times in seconds and confidences)."""
        for tok in zip(tokens, times, confidences):
            self.work += 1
            if self.start is None:
                self.start = tok[1]
            if self._open and self.detok.starts_word(tok[0]):
                self._close_word()
            self._open.append(tok)
            self._open_fresh = False

    def _close_word(self) -> None:
        word = self._build(self._open)
        self._text += self.detok.text([t for t, _, _ in self._open])
        self.work += len(self._open)
        if word is not None:
            self.words.append(word)
            self._conf_sum += word.confidence
        self._open = []

    def _build(self, group) -> Word | None:
        text = self.detok.decode([t for t, _, _ in group])
        if not text:
            return None
        spoken = [tok for tok in group if self.detok.is_spoken(tok[0])] or group
        conf = math.fsum(c for _, _, c in spoken) / len(spoken)
        return Word(text, round(spoken[0][1], 3), round(group[-1][1] + self.frame_seconds, 3), round(conf, 4))

    def open_word(self) -> Word | None:
        """The last word so far (it may still grow), or None."""
        if not self._open_fresh:
            self._open_word = self._build(self._open) if self._open else None
            self.work += len(self._open)
            self._open_fresh = True
        return self._open_word

    def all_words(self) -> list[Word]:
        """Every word so far: the done ones and the open one."""
        w = self.open_word()
        return self.words + [w] if w is not None else list(self.words)

    def transcript(self) -> str:
        self.work += len(self._open)
        return (self._text + self.detok.text([t for t, _, _ in self._open])).strip()

    def confidence(self) -> float:
        """The mean confidence of the words (0.0 with none)."""
        w = self.open_word()
        n = len(self.words) + (w is not None)
        return (self._conf_sum + (w.confidence if w is not None else 0.0)) / n if n else 0.0

    def end(self) -> float:
        """End time of the last word (the start time if no token wrote a word)."""
        w = self.open_word()
        return w.end if w is not None else self.words[-1].end if self.words else self.start
