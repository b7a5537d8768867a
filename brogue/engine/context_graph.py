"""Phrase boosting over token ids: an Aho-Corasick automaton whose states carry bonuses.

A :class:`ContextGraph` holds boosted phrases as token-id sequences. A decoding hypothesis carries
one state of it (an int; 0 is the root). Appending a token moves the state along the longest
phrase prefix that the hypothesis's text now ends with, and scores the move:

- a token that extends a phrase prefix earns that phrase's per-token bonus;
- a token that leaves a prefix gives back what the prefix had earned (less what a shorter prefix
  it falls back to keeps), but at most the last token's bonus: with the whole take-back, every
  hypothesis of a stream whose audio left a phrase half-way can sit on blanks, and the beam's commit
  rules (or greedy decoding, which has one hypothesis) keep the stream silent to its end;
- a token that completes a phrase keeps the phrase's whole bonus, and the state restarts at the
  root;
- at the end of a stream, :meth:`ContextGraph.finish` gives back an unfinished prefix's bonus.

This is the scoring of icefall's and sherpa-onnx's context graphs and of NeMo's boosting tree, written
from their published descriptions, with that cap added. Beam search (:mod:`brogue.engine.beam`) adds
:meth:`step`'s score to each hypothesis. Greedy decoding
(:func:`brogue.engine.decoding.ctc_greedy_boosted`, and the RNNT greedy loop) adds to every token's
log-probability its :meth:`deltas` score before each argmax.

The automaton is built once per phrase set (the runner caches it) and shared, read-only, by every
stream that asks for the same phrases.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

import numpy as np

__all__ = ["ContextGraph", "Booster"]

ROOT = 0


class ContextGraph:
    """``phrases``: (token ids, bonus) pairs, the bonus a number for every token or a sequence with
    one per token (0 for a token that only anchors the phrase, e.g. the space before a word in a
    character vocabulary); phrases that earn nothing are ignored. ``start``: tokens that put a new
    stream's state where it would be after them (that anchoring space)."""

    def __init__(self, phrases: Sequence[tuple[Sequence[int], float | Sequence[float]]],
                 start: Sequence[int] = ()):
        self.children: list[dict[int, int]] = [{}]
        self.score = [0.0]  # bonus earned by the prefix a state stands for
        self.end = [False]  # a phrase ends here (or at a suffix of it: see _link)
        self.fail = [ROOT]
        self.parent = [ROOT]
        self.phrases = 0
        for tokens, bonus in phrases:
            bonuses = [float(bonus)] * len(tokens) if np.isscalar(bonus) else [float(b) for b in bonus]
            if len(bonuses) != len(tokens):
                raise ValueError("a phrase needs one bonus per token")
            if not tokens or sum(bonuses) <= 0:
                continue
            node = ROOT
            for t, b in zip(tokens, bonuses):
                nxt = self.children[node].get(int(t))
                if nxt is None:
                    nxt = len(self.score)
                    self.children[node][int(t)] = nxt
                    self.children.append({})
                    self.score.append(self.score[node] + b)
                    self.end.append(False)
                    self.fail.append(ROOT)
                    self.parent.append(node)
                elif self.score[nxt] < self.score[node] + b:  # phrases share a prefix: the higher bonus
                    self.score[nxt] = self.score[node] + b
                node = nxt
            self.end[node] = True
            self.phrases += 1
        self._link()
        self._deltas: dict[int, np.ndarray] = {}
        self.start = ROOT
        for t in start:
            self.start = self._goto(self.start, int(t))

    def _link(self) -> None:
        """Failure links (breadth first), and ``end`` made true wherever a suffix is a phrase end."""
        queue = deque(self.children[ROOT].values())
        while queue:
            node = queue.popleft()
            for token, child in self.children[node].items():
                f = self.fail[node]
                while f != ROOT and token not in self.children[f]:
                    f = self.fail[f]
                target = self.children[f].get(token, ROOT)
                self.fail[child] = target if target != child else ROOT
                self.end[child] = self.end[child] or self.end[self.fail[child]]
                queue.append(child)

    def __len__(self) -> int:
        return len(self.score)

    def _goto(self, state: int, token: int) -> int:
        node = state
        while node != ROOT and token not in self.children[node]:
            node = self.fail[node]
        return self.children[node].get(token, ROOT)

    def step(self, state: int, token: int) -> tuple[float, int]:
        """(score, next state) of appending ``token`` in ``state``."""
        nxt = self._goto(state, token)
        delta = max(self.score[nxt] - self.score[state], self.score[self.parent[state]] - self.score[state])
        return delta, (ROOT if self.end[nxt] else nxt)

    def finish(self, state: int) -> float:
        """The score of ending in ``state``: an unfinished prefix gives back its last token's bonus."""
        return self.score[self.parent[state]] - self.score[state]

    def deltas(self, state: int, size: int) -> np.ndarray:
        """:meth:`step`'s score of every token id below ``size`` from ``state`` (float32 ``[size]``,
        cached per state), for greedy decoding. Blank and repeats are the caller's to score 0: they
        append nothing."""
        hit = self._deltas.get(state)
        if hit is None:
            cap = self.score[state] - self.score[self.parent[state]]
            hit = np.full(size, -cap, dtype=np.float32)
            node = state
            while True:  # the tokens that extend this prefix or a shorter one
                for token in self.children[node]:
                    if token < size and hit[token] == -cap:
                        hit[token] = self.step(state, token)[0]
                if node == ROOT:
                    break
                node = self.fail[node]
            self._deltas[state] = hit
        return hit


class Booster:
    """One stream's place in a :class:`ContextGraph` (greedy decoding: a single hypothesis)."""

    __slots__ = ("graph", "state", "_scored")

    def __init__(self, graph: ContextGraph):
        self.graph, self.state = graph, graph.start
        self._scored: np.ndarray | None = None  # scratch for pick(), allocated once

    def advance(self, token: int) -> None:
        self.state = self.graph.step(self.state, token)[1]

    def pick(self, logp: np.ndarray, blank: int, repeat: int = -1) -> int:
        """The token greedy decoding takes from one step's log-probabilities ``logp [V+1]``: the
        argmax of ``logp`` plus each token's :meth:`ContextGraph.deltas` score. Blank and ``repeat``
        (under CTC, the previous frame's token, which emits nothing again) score 0."""
        if self._scored is None or self._scored.shape != logp.shape or self._scored.dtype != logp.dtype:
            self._scored = np.empty_like(logp)
        scored = np.add(logp, self.graph.deltas(self.state, logp.shape[0]), out=self._scored)
        scored[blank] = logp[blank]
        if repeat >= 0:
            scored[repeat] = logp[repeat]
        return int(scored.argmax())
