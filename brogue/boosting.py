"""Word boosting requests: the phrases a stream asks to hear, with their boosts, and their limits.

A phrase is plain text (what a client sends in Riva's ``speech_contexts``, the WebSocket config's
``boost``, an OpenAI ``prompt``, or a tenant's ``boost`` list); its boost is a log-score bonus per
token of the phrase, spent while a decoding hypothesis follows the phrase and taken back if the
hypothesis leaves it before the end (see :mod:`brogue.engine.context_graph`). Riva recommends boosts
of 0-20; a boost of 0 does nothing.

This module validates and merges requests; it knows nothing of tokenizers or decoders.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["BoostError", "BoostPhrase", "DEFAULT_BOOST", "MAX_BOOST", "MAX_PHRASES", "MAX_PHRASE_CHARS",
           "from_wire", "merge", "phrases_from_prompt", "to_wire", "validate"]

MAX_PHRASES = 500  # per stream, the tenant's and the request's together
MAX_PHRASE_CHARS = 100
MAX_BOOST = 50.0
DEFAULT_BOOST = 8.0  # a phrase given without a boost (an OpenAI prompt's, a bare string)


class BoostError(ValueError):
    """A boosting request over a limit, or malformed; the message says which and by how much."""


@dataclass(frozen=True)
class BoostPhrase:
    text: str  # normalised: lower case, single spaces
    boost: float


def _normalise(text: str) -> str:
    return " ".join(text.lower().split())


def validate(items: Iterable, *, default_boost: float = DEFAULT_BOOST) -> tuple[BoostPhrase, ...]:
    """Phrases from ``items``: strings, ``(text, boost)`` pairs, ``{"phrase"|"text": ..., "boost": ...}``
    dicts or :class:`BoostPhrase`. Empty phrases are dropped; a phrase given twice keeps its
    highest boost. Raises :class:`BoostError` on a non-text phrase, a boost that is not a finite
    number in [0, MAX_BOOST], a phrase over MAX_PHRASE_CHARS or more than MAX_PHRASES phrases."""
    out: dict[str, float] = {}
    for item in items:
        if isinstance(item, BoostPhrase):
            text, boost = item.text, item.boost
        elif isinstance(item, str):
            text, boost = item, default_boost
        elif isinstance(item, dict):
            text = item.get("phrase", item.get("text"))
            boost = item.get("boost", default_boost)
        elif isinstance(item, (tuple, list)) and len(item) == 2:
            text, boost = item
        else:
            raise BoostError(f"a boost phrase must be text or {{'phrase': ..., 'boost': ...}}, not {item!r:.60}")
        if not isinstance(text, str):
            raise BoostError(f"a boost phrase must be text, not {type(text).__name__}")
        if isinstance(boost, bool) or not isinstance(boost, (int, float)) or not math.isfinite(boost) \
                or not 0 <= boost <= MAX_BOOST:
            raise BoostError(f"boost {boost!r:.30} of phrase {text[:40]!r} is not a number in [0, {MAX_BOOST:g}]")
        text = _normalise(text)
        if not text:
            continue
        if len(text) > MAX_PHRASE_CHARS:
            raise BoostError(f"boost phrase {text[:40]!r}... has {len(text)} characters; the limit is "
                             f"{MAX_PHRASE_CHARS}")
        out[text] = max(float(boost), out.get(text, 0.0))
        if len(out) > MAX_PHRASES:
            raise BoostError(f"more than {MAX_PHRASES} boost phrases")
    return tuple(BoostPhrase(t, b) for t, b in out.items())


def merge(*groups: Iterable[BoostPhrase]) -> tuple[BoostPhrase, ...]:
    """The union of ``groups`` (a tenant's phrases and a request's): a phrase in several keeps its
    highest boost. Raises :class:`BoostError` past MAX_PHRASES."""
    return validate(p for g in groups for p in g)


def to_wire(phrases: Iterable[BoostPhrase]) -> str:
    """``phrases`` as the ``BOOST`` input of asr_streaming carries them: JSON ``[[text, boost], ...]``."""
    return json.dumps([[p.text, p.boost] for p in phrases], separators=(",", ":"))


def from_wire(text: str) -> tuple[BoostPhrase, ...]:
    """The phrases of a ``BOOST`` input, validated again (the model trusts no client)."""
    try:
        items = json.loads(text)
    except json.JSONDecodeError:
        raise BoostError("BOOST must be JSON [[phrase, boost], ...]") from None
    if not isinstance(items, list):
        raise BoostError("BOOST must be JSON [[phrase, boost], ...]")
    return validate(items)


def phrases_from_prompt(prompt: str, boost: float = DEFAULT_BOOST) -> tuple[BoostPhrase, ...]:
    """The phrases of an OpenAI-style ``prompt``: split at sentence punctuation (``, ; : . ! ?``),
    double quotes and line ends, each boosted by ``boost``. A prompt is free text (Whisper reads it
    as preceding context); this is how Brogue reads it (docs/openai.md): "Dr. Smith, warfarin." is
    the phrases "dr", "smith" and "warfarin"."""
    if not isinstance(prompt, str):
        raise BoostError("prompt must be text")
    return validate((p for p in re.split(r'[,;:.!?"\n]+', prompt)), default_boost=boost)
