"""Batched greedy decoding of one streaming step, for CTC and RNNT heads.

Both decoders take the encoder output of a batch of streams for one chunk and return, per row, the
new tokens with their encoder-frame index and confidence (the token's probability), plus the blank
probability of every frame, which endpointing reads. Greedy decoding is what NeMo's streaming uses
(``conformer_stream_step``); the results are token-for-token the same.

A stream with boosted phrases (a :class:`~brogue.engine.context_graph.Booster`) is decoded the same
way, except that at each step the tokens extending one of its phrases have their log-probability
raised by their bonus before the argmax; the other rows of the batch are untouched.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .ort_session import make_session


@dataclass
class Decoded:
    """New output of one stream for one chunk (frame indices are relative to the chunk)."""

    tokens: list[int] = field(default_factory=list)
    frames: list[int] = field(default_factory=list)
    confidences: list[float] = field(default_factory=list)
    blank_probs: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float32))


def ctc_greedy(logprobs: np.ndarray, lengths: np.ndarray, last_tokens: np.ndarray, blank: int) -> list[Decoded]:
    """Greedy CTC over ``logprobs [B, T, V+1]``: argmax, collapse repeats (also across chunks via
    ``last_tokens``, updated in place), drop blanks. Whole-batch array operations: the only loop is
    the one that cuts the result into rows."""
    b_size, t_size = logprobs.shape[:2]
    lengths = np.asarray(lengths)
    best = logprobs.argmax(axis=-1)
    prev = np.empty_like(best)
    prev[:, :1] = np.asarray(last_tokens).reshape(-1, 1)
    prev[:, 1:] = best[:, :-1]
    valid = np.arange(t_size)[None, :] < lengths[:, None]
    rows, frames = np.nonzero(valid & (best != blank) & (best != prev))
    tokens = best[rows, frames]
    conf = np.exp(logprobs[rows, frames, tokens])
    blank_probs = np.exp(logprobs[:, :, blank])
    cuts = np.searchsorted(rows, np.arange(b_size + 1))
    spoken = lengths > 0
    last_tokens[spoken] = best[spoken, lengths[spoken] - 1]
    return [Decoded(tokens[a:z].tolist(), frames[a:z].tolist(), conf[a:z].tolist(), blank_probs[b, :lengths[b]])
            for b, (a, z) in enumerate(zip(cuts[:-1], cuts[1:]))]


def ctc_greedy_boosted(logprobs: np.ndarray, length: int, last_token: int, blank: int, booster) -> tuple[Decoded, int]:
    """Greedy CTC over one row's ``logprobs [T, V+1]`` with ``booster`` (advanced in place); returns
    (its :class:`Decoded`, the new last frame token). A repeat of the previous frame's token emits
    nothing, so it earns no bonus; the confidence is the token's unboosted probability."""
    out = Decoded(blank_probs=np.exp(logprobs[:length, blank]))
    prev = last_token
    for t in range(length):
        k = booster.pick(logprobs[t], blank, repeat=prev)
        if k != blank and k != prev:
            out.tokens.append(k)
            out.frames.append(t)
            out.confidences.append(float(np.exp(logprobs[t, k])))
            booster.advance(k)
        prev = k
    return out, prev


class _TorchStep:
    """A TorchScript step called with and returning numpy arrays (on its device in between)."""

    def __init__(self, module, memory):
        self.module, self.memory, self.torch = module, memory, memory.torch

    def __call__(self, *arrays):
        t = self.torch
        with t.inference_mode():
            out = self.module(*(t.from_numpy(np.ascontiguousarray(a)).to(self.memory.device) for a in arrays))
        return [self.memory.host(o) for o in (out if isinstance(out, tuple) else (out,))]


class RNNTGreedy:
    """Batched greedy RNNT: frame by frame, up to ``max_symbols`` tokens per frame, decoder and joint
    run once per symbol step for all rows that still emit.

    The decoder and joint run on ONNX Runtime (``provider``), or, given ``loader`` (a
    :class:`~brogue.engine.torch_backend.StepLoader`), as their TorchScript steps on its device.
    """

    def __init__(self, model_dir: Path, rnnt: dict, blank: int, provider: str = "cpu", threads: int = 0,
                 device_id: int = 0, weights=None, loader=None):
        root = Path(model_dir)
        if loader is not None:
            from .torch_backend import step_file

            self._decoder = _TorchStep(loader.load(root / step_file(rnnt["decoder"])), loader.memory)
            self._joint = _TorchStep(loader.load(root / step_file(rnnt["joint"])), loader.memory)
        else:
            decoder = make_session(root / rnnt["decoder"], provider, threads, device_id, weights)
            joint = make_session(root / rnnt["joint"], provider, threads, device_id, weights)
            self._decoder = lambda targets, h, c: decoder.run(None, {"targets": targets, "h": h, "c": c})
            self._joint = lambda frame, g: joint.run(None, {"encoder_frame": frame, "decoder_output": g})
        self.layers = int(rnnt["pred_rnn_layers"])
        self.hidden = int(rnnt["pred_hidden"])
        self.max_symbols = int(rnnt["max_symbols"])
        self.blank = blank

    def initial_state(self, batch: int):
        """Decoder output and LSTM state after the start symbol (blank), for ``batch`` rows."""
        h = np.zeros((self.layers, batch, self.hidden), dtype=np.float32)
        return self._predict(np.full(batch, self.blank, dtype=np.int64), h, h.copy())

    def _predict(self, targets, h, c):
        g, h2, c2 = self._decoder(targets, h, c)
        return g, h2, c2

    def __call__(self, encoded: np.ndarray, lengths: np.ndarray, state, boosters=None) -> list[Decoded]:
        """Decode ``encoded [B, T, D]``; ``state = (dec_out [B,H], h [L,B,H], c [L,B,H], last [B])``
        is updated in place. ``boosters``: per row, a Booster or None."""
        g, h, c, last = state
        B = encoded.shape[0]
        out = [Decoded(blank_probs=np.zeros(int(lengths[b]), dtype=np.float32)) for b in range(B)]
        for t in range(int(lengths.max(initial=0))):
            rows = np.nonzero(lengths > t)[0]
            for symbol in range(self.max_symbols):
                if rows.size == 0:
                    break
                logp = self._joint(np.ascontiguousarray(encoded[rows, t]), g[rows])[0]
                k = logp.argmax(axis=-1)
                if boosters is not None:
                    for i, b in enumerate(rows):
                        if boosters[b] is not None:
                            k[i] = boosters[b].pick(logp[i], self.blank)
                if symbol == 0:
                    for i, b in enumerate(rows):
                        out[b].blank_probs[t] = np.exp(logp[i, self.blank])
                emit = k != self.blank
                rows, k, logp = rows[emit], k[emit], logp[emit]
                if rows.size == 0:
                    break
                for i, b in enumerate(rows):
                    if boosters is not None and boosters[b] is not None:
                        boosters[b].advance(int(k[i]))
                    out[b].tokens.append(int(k[i]))
                    out[b].frames.append(t)
                    out[b].confidences.append(float(np.exp(logp[i, k[i]])))
                g2, h2, c2 = self._predict(k.astype(np.int64), h[:, rows], c[:, rows])
                g[rows], h[:, rows], c[:, rows] = g2, h2, c2
                last[rows] = k
        return out
