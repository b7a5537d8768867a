"""Character n-gram language models for shallow fusion in CTC beam search.

A :class:`CharNgramLM` is an interpolated Kneser-Ney model over characters, built in memory from
plain text (one normalised sentence per line) when it is loaded. Characters, not words: the demo
model spells with characters, test speech has words no training sentence had (an out-of-vocabulary
rate of about 8% on the base test split), and a character model scores any spelling, for any
vocabulary whose pieces are text (SentencePiece pieces are scored character by character).

The text *is* the artifact (``lm.txt.gz``, a few hundred KB): the counts are rebuilt at load, in a
few seconds, so there is no binary format to version. :class:`MixedLM` interpolates models
linearly; a domain adapter's LM is a small model mixed with the base one.

Scores are natural-log probabilities. ``^`` pads the start of a sentence and ``$`` ends it; both
are reserved and never scored as text.
"""

from __future__ import annotations

import gzip
import math
from collections import Counter
from functools import lru_cache
from pathlib import Path

BOS = "^"
EOS = "$"
_CACHE_SIZE = 1 << 18


def normalise_line(text: str) -> str:
    """Lowercase, words separated by one space, reserved characters removed."""
    return " ".join(text.lower().replace(BOS, " ").replace(EOS, " ").split())


def read_text(path: str | Path) -> list[str]:
    """Sentences from a ``.txt`` or ``.txt.gz`` file, one per line, normalised; empty lines dropped."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [s for s in (normalise_line(line) for line in f) if s]


def text_bytes(sentences, compress: bool = True) -> tuple[bytes, int]:
    """The bytes of a sentence file (normalised, one per line, empty ones dropped; gzip without a
    timestamp, so the same text gives the same bytes) and the number of sentences in it."""
    lines = [s for s in (normalise_line(str(t)) for t in sentences) if s]
    data = ("\n".join(lines) + "\n").encode()
    return (gzip.compress(data, mtime=0) if compress else data), len(lines)


def write_text(path: str | Path, sentences) -> int:
    """Write a sentence file (gzip when ``path`` ends in .gz); returns the number of sentences."""
    path = Path(path)
    data, n = text_bytes(sentences, compress=path.suffix == ".gz")
    path.write_bytes(data)
    return n


class _CharLM:
    """What every character model here shares: ``order``, and a ``logp(context, char)``."""

    order: int

    def context(self, text: str) -> str:
        """The part of ``text`` (the sentence so far) that the next character depends on: its last
        ``order - 1`` characters, padded with BOS at a sentence start."""
        if self.order <= 1:
            return ""
        return (BOS * (self.order - 1) + text)[-(self.order - 1):]

    def logp(self, ctx: str, c: str) -> float:
        raise NotImplementedError

    def sentence_logp(self, text: str) -> float:
        """log P of a whole sentence, its end included."""
        text = normalise_line(text)
        total, so_far = 0.0, ""
        for c in text + EOS:
            total += self.logp(self.context(so_far), c)
            so_far += c
        return total


class CharNgramLM(_CharLM):
    """Interpolated Kneser-Ney character n-gram of ``order`` (context ``order - 1`` characters).

    The highest order uses raw counts, lower orders continuation counts (how many distinct
    characters precede a context), each discounted by ``discount``; the base of the recursion is
    uniform over the alphabet (the characters seen in training, plus ``alphabet``: pass the
    characters the acoustic model can write), plus ``$``, plus one slot shared by any other
    character. So for every context the probabilities of what can follow sum to one.
    """

    def __init__(self, sentences, order: int = 8, discount: float = 0.75, alphabet: str = ""):
        if order < 1:
            raise ValueError(f"n-gram order must be at least 1, not {order}")
        if not 0 < discount < 1:
            raise ValueError(f"discount must be in (0, 1), not {discount}")
        self.order = order
        self.discount = discount
        # Flat tables (string keys, no per-context dicts): a few times less memory than nested ones.
        top: Counter = Counter()  # order-grams (context + char): the top table's raw counts
        seen = [set() for _ in range(order + 1)]  # seen[L]: distinct L-grams, 2 <= L < order
        chars = set(alphabet) - {BOS, EOS}
        n = 0
        pad = BOS * (order - 1)
        for s in sentences:
            s = normalise_line(s)
            if not s:
                continue
            n += 1
            chars.update(s)
            s = pad + s + EOS
            for i in range(order - 1, len(s)):
                top[s[i - order + 1:i + 1]] += 1
                for length in range(2, order):
                    seen[length].add(s[i - length + 1:i + 1])
        if n == 0:
            raise ValueError("no text to build a language model from")
        self.sentences = n
        self.alphabet = frozenset(chars)
        # Table k (context of k characters) maps context + char to a count: raw counts at the top
        # order, else continuation counts, the number of distinct characters seen before it.
        self._counts: list[dict] = []
        for k in range(order - 1):
            cont: Counter = Counter()
            for g in (seen[k + 2] if k + 2 < order else top):
                cont[g[1:]] += 1
            self._counts.append(dict(cont))
        self._counts.append(dict(top))
        del top, seen
        # Per context: (total count, distinct followers).
        self._contexts: list[dict] = []
        for table in self._counts:
            stats: dict = {}
            for key, count in table.items():
                total, distinct = stats.get(key[:-1], (0, 0))
                stats[key[:-1]] = (total + count, distinct + 1)
            self._contexts.append(stats)
        self._uniform = 1.0 / (len(self.alphabet) + 2)  # the alphabet, EOS, and "unseen"
        self._prob = lru_cache(maxsize=_CACHE_SIZE)(self._prob_uncached)

    @classmethod
    def from_file(cls, path: str | Path, order: int = 8, discount: float = 0.75, alphabet: str = "") -> "CharNgramLM":
        return cls(read_text(path), order, discount, alphabet)

    def _prob_uncached(self, ctx: str, c: str) -> float:
        p = self._uniform
        d = self.discount
        for k in range(self.order):
            cx = ctx[len(ctx) - k:] if k else ""
            entry = self._contexts[k].get(cx)
            if entry is None:
                break  # no longer context was seen either
            total, distinct = entry
            p = max(self._counts[k].get(cx + c, 0) - d, 0.0) / total + d * distinct / total * p
        return p

    def logp(self, ctx: str, c: str) -> float:
        """log P(c | ctx), where ``ctx`` is :meth:`context` of the text so far; ``c`` may be ``$``."""
        return math.log(self._prob(ctx, c))


class MixedLM(_CharLM):
    """Interpolation ``sum(w_i * P_i)`` of character models; the prior weights must sum to 1.

    With ``window=0`` the weights are the priors (linear interpolation). With ``window=W`` they are
    each model's posterior given the last ``W`` characters of the text: ``w_i`` is proportional to
    ``prior_i * P_i(those characters)``, each character scored in its own context. A domain model
    then takes over while the speech reads like its text and gives way while it does not, instead
    of costing every general sentence ``log(1 - weight)`` per character. The context (see
    :meth:`context`) is ``W`` characters longer than the longest part's.
    """

    def __init__(self, parts: list[tuple[CharNgramLM, float]], window: int = 0, temperature: float = 1.0):
        if not parts or abs(sum(w for _, w in parts) - 1) > 1e-6 or any(w <= 0 for _, w in parts):
            raise ValueError("mixture weights must be positive and sum to 1")
        if window < 0:
            raise ValueError(f"mixture window must be 0 or more characters, not {window}")
        if not temperature > 0:
            raise ValueError(f"mixture temperature must be positive, not {temperature}")
        self.parts = parts
        self.window = window
        self._inv_temp = 1.0 / temperature
        self._span = max(m.order for m, _ in parts)  # the longest part's order
        self.order = self._span + window
        self._log_priors = [math.log(w) for _, w in parts]
        # No cache of logp itself: the beam search caches whole token extensions, and a cache here
        # measured 30 hits in 182k calls. The parts' probabilities and the weights are cached.
        self._log_weights = lru_cache(maxsize=_CACHE_SIZE)(self._log_weights_uncached)

    @staticmethod
    def _tail(ctx: str, m: CharNgramLM) -> str:
        # A BOS-padded context of the longest order ends with every shorter model's context.
        return ctx[len(ctx) - m.order + 1:] if m.order > 1 else ""

    def _log_weights_uncached(self, ctx: str) -> tuple:
        """Posterior log-weights of the parts given the last ``window`` characters of ``ctx``."""
        scores = list(self._log_priors)
        for j in range(len(ctx) - self.window, len(ctx)):
            if ctx[j] == BOS:
                continue  # before the start of the text: no evidence
            hist = ctx[:j]
            for i, (m, _) in enumerate(self.parts):
                scores[i] += math.log(m._prob(self._tail(hist, m), ctx[j])) * self._inv_temp
        top = max(scores)
        norm = top + math.log(sum(math.exp(s - top) for s in scores))
        return tuple(s - norm for s in scores)

    def logp(self, ctx: str, c: str) -> float:
        logw = self._log_weights(ctx) if self.window else self._log_priors
        return math.log(sum(math.exp(lw) * m._prob(self._tail(ctx, m), c)
                            for (m, _), lw in zip(self.parts, logw)))


_loaded: dict = {}


def load_lm(path: str | Path, order: int = 8, discount: float = 0.75, alphabet: str = "") -> CharNgramLM:
    """The model for ``path`` (a sentence file), built once per process and file version: Triton
    instances, eval runs and tests that open the same model share one copy."""
    path = Path(path).resolve()
    try:
        st = path.stat()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: language model text missing") from None
    alphabet = "".join(sorted(set(alphabet)))
    key = (str(path), st.st_mtime_ns, st.st_size, order, discount, alphabet)
    lm = _loaded.get(key)
    if lm is None:
        try:
            lm = CharNgramLM.from_file(path, order, discount, alphabet)
        except (OSError, EOFError, UnicodeDecodeError) as e:
            raise ValueError(f"{path}: unreadable language model text ({e})") from None
        for old in [k for k in _loaded if k[0] == key[0]]:
            del _loaded[old]  # an older version of the same file
        _loaded[key] = lm
    return lm
