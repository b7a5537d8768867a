"""Boost phrases to token ids with the model's own vocabulary, and to a :class:`ContextGraph`.

- A character vocabulary writes a phrase letter by letter; the space before it anchors the phrase
  at a word start (it earns nothing; a new stream starts as if after a space).
- A SentencePiece vocabulary encodes the phrase with the exported ``tokenizer.model`` (its pieces
  must be the model's tokens), which marks the word start itself.

A phrase's first token earns nothing either (unless it is the phrase's only token): the audio must
start the phrase on its own, and the bonus then holds the decoder to it. Boosting the first token
too found no more phrases in ``bench/boosting.py`` and made every word start that shares a
phrase's first letter a candidate: on speech without the phrases it cost up to 5 times the word
errors (docs/boosting.md).

A phrase the vocabulary cannot write (a character it lacks; an unknown piece) is refused with a
:class:`PhraseError` naming it, never silently dropped.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

from .context_graph import ContextGraph

__all__ = ["BONUS_PER_BOOST", "PhraseError", "PhraseTokenizer"]

# A phrase's boost B (Riva's scale: 0-20 recommended) gives each of its tokens a log-probability
# bonus of B * BONUS_PER_BOOST (docs/boosting.md: how it was chosen).
BONUS_PER_BOOST = 0.25


class PhraseError(ValueError):
    """A boost phrase the model's vocabulary cannot write."""


class PhraseTokenizer:
    """``tokens``, ``kind`` ("char" | "sentencepiece") and, for SentencePiece, the tokenizer file."""

    def __init__(self, tokens: list[str], kind: str, tokenizer_file: str | Path | None = None,
                 cache_size: int = 64):
        self.kind = kind
        self._cache: OrderedDict = OrderedDict()
        self._cache_size = cache_size
        if kind == "char":
            self._ids = {t: i for i, t in enumerate(tokens) if len(t) == 1}
            self._space = self._ids.get(" ")
            self._sp = None
        elif kind == "sentencepiece":
            if tokenizer_file is None or not Path(tokenizer_file).is_file():
                raise PhraseError(f"this model has no tokenizer file ({tokenizer_file}): boosting needs it")
            import sentencepiece

            self._sp = sentencepiece.SentencePieceProcessor(model_file=str(tokenizer_file))
            pieces = [self._sp.id_to_piece(i) for i in range(self._sp.get_piece_size())]
            if pieces != list(tokens):
                raise PhraseError("the tokenizer file's pieces are not the model's tokens")
            self._unk = self._sp.unk_id()
        else:
            raise PhraseError(f"unknown vocabulary kind {kind!r}")

    @classmethod
    def for_model(cls, meta, model_dir: str | Path) -> "PhraseTokenizer":
        """The tokenizer of an exported model (its ``model.json`` as :class:`ModelMeta`)."""
        name = meta.raw["vocabulary"].get("tokenizer_file")
        return cls(meta.tokens, meta.vocab_kind, Path(model_dir) / name if name else None)

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (already lower case, single spaces)."""
        if self._sp is None:
            missing = sorted({c for c in text if c not in self._ids})
            if missing:
                raise PhraseError(f"boost phrase {text!r} has characters this model cannot write: "
                                  f"{''.join(missing)!r}")
            return [self._ids[c] for c in text]
        ids = self._sp.encode(text)
        if self._unk in ids:
            raise PhraseError(f"boost phrase {text!r} has characters this model's tokenizer does not know")
        return ids

    def graph(self, phrases) -> ContextGraph:
        """The context graph of ``phrases`` (:class:`brogue.boosting.BoostPhrase`), cached by phrase set."""
        key = tuple(phrases)
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            return hit
        entries = []
        for p in phrases:
            ids = self.encode(p.text)
            bonus = p.boost * BONUS_PER_BOOST
            bonuses = [0.0] + [bonus] * (len(ids) - 1) if len(ids) > 1 else [bonus]
            if self._sp is None and self._space is not None:  # anchored at a word start
                entries.append(([self._space, *ids], [0.0, *bonuses]))
            else:
                entries.append((ids, bonuses))
        g = ContextGraph(entries, start=[self._space] if self._sp is None and self._space is not None else ())
        self._cache[key] = g
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return g
