"""Token ids to text, for character vocabularies and SentencePiece pieces, without SentencePiece.

SentencePiece marks a word start with ``▁`` (U+2581) and may fall back to byte pieces ``<0xNN>``;
decoding joins the pieces, turns the marks into spaces, the byte pieces into UTF-8 and the unknown
piece into " ⁇ ". This equals
``SentencePieceProcessor.decode`` for the ids a greedy ASR decoder emits (no control pieces).
"""

from __future__ import annotations

import re

_BYTE = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")
WORD_MARK = "\u2581"
# How SentencePiece writes its special pieces: unknown as " \u2047 ", controls as nothing.
_SPECIAL = {"<unk>": " \u2047 ", "<s>": "", "</s>": "", "<pad>": ""}


class Detokenizer:
    """Decode token ids of one vocabulary (``kind`` "char" or "sentencepiece")."""

    def __init__(self, tokens: list[str], kind: str):
        if kind not in ("char", "sentencepiece"):
            raise ValueError(f"unknown vocabulary kind {kind!r}")
        self.tokens = tokens
        self.kind = kind
        self._bytes = {i: int(m.group(1), 16) for i, t in enumerate(tokens) if (m := _BYTE.match(t))}
        self._surface = [_SPECIAL.get(t, t) for t in tokens] if kind == "sentencepiece" else tokens
        self._starts = [t.startswith(WORD_MARK) if kind == "sentencepiece" else t == " " for t in tokens]
        self._spoken = [bool(t.strip()) for t in tokens]

    def pieces(self, ids) -> list[str]:
        return [self.tokens[i] for i in ids]

    def decode(self, ids) -> str:
        """Text of a whole token sequence (leading and trailing spaces stripped)."""
        return self.text(ids).strip()

    def text(self, ids) -> str:
        """Text of a token sequence, not stripped. Concatenative at word starts: the text of a
        sequence is the texts of its pieces cut before any word-start token, joined (a word-start
        token is never a byte piece, so no UTF-8 sequence is cut)."""
        if self.kind == "char":
            return "".join([self.tokens[i] for i in ids])
        out, pending = [], bytearray()
        for i in ids:
            if i in self._bytes:
                pending.append(self._bytes[i])
                continue
            if pending:
                out.append(pending.decode("utf-8", errors="replace"))
                pending = bytearray()
            out.append(self._surface[i])
        if pending:
            out.append(pending.decode("utf-8", errors="replace"))
        return "".join(out).replace(WORD_MARK, " ")

    def delta(self, ids) -> str:
        """Text of tokens appended to a stream, not stripped: concatenating the deltas of a stream
        and stripping the result gives :meth:`decode` of all its tokens (byte pieces aside)."""
        text = "".join(self._surface[i] for i in ids)
        return text.replace(WORD_MARK, " ") if self.kind == "sentencepiece" else text

    def lm_surfaces(self) -> list[str]:
        """Each token's text as a language model scores it: the word mark is a space; byte and
        control pieces are empty (not scored)."""
        if self.kind == "char":
            return list(self.tokens)
        return ["" if i in self._bytes else self._surface[i].replace(WORD_MARK, " ").replace("\u2047", "")
                for i in range(len(self.tokens))]

    def starts_word(self, token_id: int) -> bool:
        """Whether this token begins a new word (for word timing)."""
        return self._starts[token_id]

    def is_spoken(self, token_id: int) -> bool:
        """Whether the token writes more than white space (a bare space or ``▁`` does not)."""
        return self._spoken[token_id]
