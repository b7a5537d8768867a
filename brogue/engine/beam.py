"""Streaming CTC prefix beam search with a character language model (shallow fusion).

Each hypothesis (a token prefix) is scored ``log P_ctc(prefix) + alpha * log P_lm(text) + beta * n``,
where ``n`` counts the LM-scored characters (the insertion bonus offsets the LM's pull towards
short output). The LM scores each token's surface text character by character: SentencePiece's
word mark is a space, and spaces never start a sentence or double up.

Streaming: a :class:`BeamState` per stream carries the beam from chunk to chunk, and only
*committed* tokens leave it, so a stream's output is append-only as with greedy decoding:

- the tokens that every hypothesis in the beam starts with are committed after each chunk (a
  hypothesis scoring ``threshold`` below the best is dropped, so that unlikely alternatives do
  not hold the text back);
- so are the best hypothesis's tokens emitted ``max_delay`` frames ago or earlier (hypotheses that
  disagree with them are dropped): a bound on how late a word appears;
- after ``silence_frames`` frames in which the best hypothesis emitted nothing, the beam is cut to
  that hypothesis and all of it is committed (a pause ends the ambiguity; endpointing sees the
  same pause in the blank probabilities and must find the words already out);
- the last chunk of a stream scores the sentence end and commits the best hypothesis.

A stream with boosted phrases has a :class:`~brogue.engine.context_graph.ContextGraph` in its
:class:`BeamState`: each hypothesis carries its state in the graph, and the graph's score for each
token a hypothesis appends is added to its LM score (given back if the phrase is left unfinished).

With ``silence_frames`` and ``max_delay`` large, decoding a stream chunk by chunk gives the same
text as decoding all its frames at once (tests check this).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .decoding import Decoded
from .lm import EOS

NEG = -1.0e30


def _lse(a: float, b: float) -> float:
    if a < b:
        a, b = b, a
    if b <= NEG:
        return a
    return a + math.log1p(math.exp(b - a))


@dataclass(frozen=True)
class BeamConfig:
    """Search settings; ``model.json``'s ``decoding.ctc_lm`` carries them for an exported model."""

    alpha: float = 1.0  # LM weight
    beta: float = 1.5  # bonus per LM-scored character
    beam: int = 16  # hypotheses kept per frame
    threshold: float = 10.0  # hypotheses scoring this far (log) below the best are dropped
    prune: float = -8.0  # tokens whose frame log-probability is lower are not tried (blank always is)
    silence_frames: int = 10  # commit everything after this many frames without a new token
    max_pending: int = 200  # commit the best hypothesis when one holds this many uncommitted tokens
    max_delay: int = 12  # commit the best hypothesis's tokens emitted this many frames ago
    # An adapter's domain LM is mixed in with weights that follow the last `domain_window`
    # characters (see brogue.engine.lm.MixedLM; 0: fixed weights), tempered by `domain_temperature`.
    domain_window: int = 6
    domain_temperature: float = 2.0

    @classmethod
    def from_dict(cls, d: dict) -> "BeamConfig":
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        cfg = cls(**known)
        if (min(cfg.beam, cfg.silence_frames, cfg.max_pending, cfg.max_delay) < 1 or cfg.threshold <= 0
                or cfg.domain_window < 0 or cfg.domain_temperature <= 0):
            raise ValueError(f"invalid beam settings {known}")
        return cfg


@dataclass
class _Hyp:
    pb: float  # log P(prefix, path ends in blank)
    pnb: float  # log P(prefix, path ends in its last token)
    lm: float  # alpha * LM log-prob + beta * characters, of the uncommitted part
    text: str  # the last characters of the text so far (committed + pending): the LM context
    frames: tuple = ()  # absolute encoder frame of each pending token's first emission
    confs: tuple = ()  # that frame's probability of the token
    ctx: int = 0  # state in the stream's context graph (boosted phrases), if it has one

    def total(self) -> float:
        return _lse(self.pb, self.pnb) + self.lm


@dataclass
class BeamState:
    """The beam of one stream: pending token prefixes (after the committed ones) and their scores."""

    hyps: dict = field(default_factory=lambda: {(): _Hyp(0.0, NEG, 0.0, "")})
    last_committed: int = -1  # last committed token (repeats of it need a blank in between)
    frame: int = 0  # absolute encoder frames seen
    last_emit: int = 0  # absolute frame of the best hypothesis's last new token
    last_frame: int = 0  # absolute frame of the last committed token
    context: object = None  # the stream's ContextGraph (boosted phrases), or None

    def __post_init__(self):
        if self.context is not None:
            for h in self.hyps.values():
                h.ctx = self.context.start


class CTCBeamSearch:
    """Prefix beam search over per-frame log-probabilities ``[T, V+1]`` of one vocabulary.

    ``surfaces``: each token's text (as the detokenizer writes it; the word mark already a space).
    ``lm``: a model with ``context(text)`` and ``logp(context, char)``.
    """

    def __init__(self, surfaces: list[str], blank: int, lm, config: BeamConfig):
        self.surfaces = surfaces
        self.blank = blank
        self.lm = lm
        self.cfg = config
        self._cache: dict = {}  # (LM context, token) -> (text added, score); cleared past 200k entries
        self._spaces = {i for i, t in enumerate(surfaces) if t and not t.strip()}
        self._keep = max(self.lm.order, 2)  # characters of text a hypothesis keeps (its LM context)

    def _extend(self, text: str, token: int) -> tuple[str, float]:
        """(new text, alpha * LM log-prob + beta * characters) for ``token`` after ``text``."""
        ctx = self.lm.context(text)
        key = (ctx, token)
        hit = self._cache.get(key)
        if hit is None:
            score, added = 0.0, ""
            prev = text[-1:] if text else ""
            for ch in self.surfaces[token]:
                if ch == " " and prev in ("", " "):
                    continue  # no leading or double spaces
                score += self.cfg.alpha * self.lm.logp(self.lm.context(text + added), ch)
                score += self.cfg.beta
                added += ch
                prev = ch
            hit = (added, score)
            if len(self._cache) > 200_000:
                self._cache.clear()
            self._cache[key] = hit
        return (text + hit[0])[-self._keep:], hit[1]

    def step(self, state: BeamState, logprobs: np.ndarray, final: bool = False) -> Decoded:
        """Advance ``state`` over ``logprobs [T, V+1]`` (one chunk); return the newly committed tokens,
        their frames relative to this chunk (negative: emitted in an earlier chunk) and confidences."""
        base = state.frame
        blank = self.blank
        width = self.cfg.beam
        graph = state.context
        for t in range(logprobs.shape[0]):
            row = logprobs[t]
            cand = [int(k) for k in np.flatnonzero(row > self.cfg.prune) if k != blank]
            cand_set = set(cand)
            p_blank = float(row[blank])
            nxt: dict = {}
            # Each prefix first carries over (a blank, or its last token again), keeping the frame
            # its tokens were first emitted at; then every prefix grows by one token.
            for key, h in state.hyps.items():
                e = nxt[key] = _Hyp(_lse(h.pb, h.pnb) + p_blank, NEG, h.lm, h.text, h.frames, h.confs, h.ctx)
                last = key[-1] if key else state.last_committed
                if last in cand_set:
                    e.pnb = h.pnb + float(row[last])
            for key, h in state.hyps.items():
                tot = _lse(h.pb, h.pnb)
                last = key[-1] if key else state.last_committed
                for k in cand:
                    if k in self._spaces and (not h.text or h.text[-1] == " "):
                        continue  # a space at the start or after a space adds nothing to the text
                    p = float(row[k])
                    from_prev = (h.pb if k == last else tot) + p  # a repeat needs a blank between
                    nkey = key + (k,)
                    ne = nxt.get(nkey)
                    if ne is None:
                        text, lm = self._extend(h.text, k)
                        ctx = h.ctx
                        if graph is not None:
                            bonus, ctx = graph.step(h.ctx, k)
                            lm += bonus
                        ne = nxt[nkey] = _Hyp(NEG, NEG, h.lm + lm, text, h.frames + (state.frame,),
                                              h.confs + (math.exp(p),), ctx)
                    ne.pnb = _lse(ne.pnb, from_prev)
            ranked = sorted(nxt.items(), key=lambda kv: kv[1].total(), reverse=True)[:width]
            top = ranked[0][1].total()
            floor = top - self.cfg.threshold
            ranked = [kv for kv in ranked if kv[1].total() >= floor]
            for _, h in ranked:  # keep the numbers near zero over long streams
                h.pb -= top if h.pb > NEG else 0.0
                h.pnb -= top if h.pnb > NEG else 0.0
            if ranked[0][1].frames and ranked[0][1].frames[-1] == state.frame:
                state.last_emit = state.frame
            state.hyps = dict(ranked)
            state.frame += 1
        out = self._commit(state, base, final)
        out.blank_probs = np.exp(logprobs[:, blank]).astype(np.float32)
        return out

    def _commit(self, state: BeamState, base: int, final: bool) -> Decoded:
        hyps = state.hyps
        best_key, best = max(hyps.items(), key=lambda kv: kv[1].total())
        if final:
            graph = state.context
            ends = {k: h.total() + self.cfg.alpha * self.lm.logp(self.lm.context(h.text), EOS)
                    + (graph.finish(h.ctx) if graph is not None else 0.0) for k, h in hyps.items()}
            best_key = max(ends, key=ends.get)
            best = hyps[best_key]
        if final or state.frame - state.last_emit >= self.cfg.silence_frames or len(best_key) >= self.cfg.max_pending:
            n = len(best_key)
            state.hyps = {(): _Hyp(best.pb, best.pnb, 0.0, best.text, ctx=best.ctx)}
        else:
            keys = list(hyps)
            n = 0  # tokens every hypothesis starts with
            first = keys[0]
            while n < len(first) and all(len(k) > n and k[n] == first[n] for k in keys):
                n += 1
            old = state.frame - self.cfg.max_delay  # and the best one's tokens older than this
            m = next((i for i, f in enumerate(best.frames) if f > old), len(best.frames))
            if m > n:
                n = m
                hyps = {k: h for k, h in hyps.items() if k[:n] == best_key[:n]}
            if n:
                state.hyps = {k[n:]: _Hyp(h.pb, h.pnb, h.lm, h.text, h.frames[n:], h.confs[n:], h.ctx)
                              for k, h in hyps.items()}
        frames = []
        for f in best.frames[:n]:
            # Hypotheses can differ in when a shared token was emitted; keep times in order.
            state.last_frame = max(state.last_frame, f)
            frames.append(state.last_frame - base)
        if n:
            state.last_committed = best_key[n - 1]
        return Decoded(tokens=list(best_key[:n]), frames=frames, confidences=list(best.confs[:n]))
