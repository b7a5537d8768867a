"""The vectorised decoders against the per-frame loops they replaced: token for token."""

from __future__ import annotations

import numpy as np
import pytest

from brogue.engine.decoding import ctc_greedy
from brogue.engine.vocab import Detokenizer


def _ctc_greedy_loop(logprobs, lengths, last_tokens, blank):
    """The frame-by-frame greedy CTC the engine used before (the reference)."""
    best = logprobs.argmax(axis=-1)
    out = []
    for b in range(logprobs.shape[0]):
        n = int(lengths[b])
        blank_probs = np.exp(logprobs[b, :n, blank]).astype(np.float32)
        tokens, frames, confs = [], [], []
        prev = int(last_tokens[b])
        for t in range(n):
            k = int(best[b, t])
            if k != blank and k != prev:
                tokens.append(k)
                frames.append(t)
                confs.append(float(np.exp(logprobs[b, t, k])))
            prev = k
        if n:
            last_tokens[b] = prev
        out.append((tokens, frames, confs, blank_probs))
    return out


def _peaked_logprobs(rng, b, t, v, blank):
    """Log-softmax of logits where runs of repeats and blanks are likely, as in real CTC output."""
    logits = rng.standard_normal((b, t, v)).astype(np.float32)
    winners = rng.integers(0, v, (b, t))
    winners[rng.random((b, t)) < 0.5] = blank
    repeat = rng.random((b, t)) < 0.4
    for j in range(1, t):
        winners[:, j] = np.where(repeat[:, j], winners[:, j - 1], winners[:, j])
    np.put_along_axis(logits, winners[..., None], 6.0, axis=-1)
    return logits - np.log(np.exp(logits).sum(-1, keepdims=True))


@pytest.mark.parametrize("seed", range(6))
def test_vectorised_ctc_greedy_equals_the_frame_loop(seed):
    rng = np.random.default_rng(seed)
    b, t, v = 9, 13, 29
    blank = v - 1
    lp = _peaked_logprobs(rng, b, t, v, blank)
    lengths = rng.integers(0, t + 1, b)
    lengths[0], lengths[1] = 0, t  # an empty row and a full one
    last = rng.integers(-1, v, b)
    last_ref = last.copy()
    got = ctc_greedy(lp, lengths, last, blank)
    want = _ctc_greedy_loop(lp, lengths, last_ref, blank)
    for d, (tokens, frames, confs, blank_probs) in zip(got, want):
        assert d.tokens == tokens and d.frames == frames and d.confidences == confs
        assert d.blank_probs.dtype == np.float32 and np.array_equal(d.blank_probs, blank_probs)
    assert np.array_equal(last, last_ref)  # the carried last token, also for the empty row


def test_ctc_greedy_collapses_across_chunks():
    """A token that ends one chunk and starts the next is one token, not two."""
    v, blank = 4, 3
    lp = np.log(np.full((1, 4, v), 0.01, np.float32))
    for f, k in enumerate([1, 1, 2, 2]):
        lp[0, f, k] = 0.0
    last = np.array([-1])
    first = ctc_greedy(lp[:, :2], np.array([2]), last, blank)[0]
    second = ctc_greedy(lp[:, 2:], np.array([2]), last, blank)[0]
    again = ctc_greedy(lp[:, 2:], np.array([2]), np.array([2]), blank)[0]
    assert first.tokens == [1] and second.tokens == [2] and again.tokens == []


@pytest.mark.parametrize("kind,tokens,example", [
    ("char", [" ", "a", "b", "'"], ([0, 1, 3, 0, 2, 0], "a' b")),
    ("sentencepiece", ["<unk>", "\u2581", "\u2581ab", "c", "<0xC3>", "<0xA9>", "\u2581d"],
     ([2, 3, 4, 5, 6, 0], "abc\u00e9 d \u2047")),
])
def test_detokenizer_text_is_concatenative_at_word_starts(kind, tokens, example):
    """What the incremental transcript relies on: the text of a sequence is the text of its pieces
    cut before each word-start token, joined; and decode is that text stripped."""
    d = Detokenizer(tokens, kind)
    rng = np.random.default_rng(0)
    for _ in range(200):
        ids = rng.integers(0, len(tokens), rng.integers(0, 12)).tolist()
        cuts = [0] + [i for i in range(1, len(ids)) if d.starts_word(ids[i])] + [len(ids)]
        assert "".join(d.text(ids[a:z]) for a, z in zip(cuts, cuts[1:])) == d.text(ids)
    assert d.decode(example[0]) == example[1]
