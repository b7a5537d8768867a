"""End-of-utterance detection from the model's per-frame blank probabilities, with Riva's knobs.

Riva's ``EndpointingConfig`` has ``start_history`` / ``start_threshold`` (ms and fraction: an
utterance starts when at least that fraction of the last ``start_history`` ms of frames are
non-blank) and ``stop_history`` / ``stop_threshold`` (an utterance ends when at least that fraction
of the last ``stop_history`` ms are blank). A frame counts as blank when its blank probability is at
least one half. ``stop_history_eou`` / ``stop_threshold_eou`` do the same with a shorter window for an
early end-of-utterance hint, which marks the partial ``stable``.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True)
class EndpointingConfig:
    start_history_ms: int = 240
    start_threshold: float = 0.2
    stop_history_ms: int = 800
    stop_threshold: float = 0.98
    stop_history_eou_ms: int = 400
    stop_threshold_eou: float = 0.98

    def __post_init__(self):
        for name in ("start_history_ms", "stop_history_ms", "stop_history_eou_ms"):
            v = getattr(self, name)
            if not isinstance(v, int) or not 0 < v <= 60_000:
                raise ValueError(f"endpointing {name} must be an integer in 1..60000 ms, not {v!r}")
        for name in ("start_threshold", "stop_threshold", "stop_threshold_eou"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not 0.0 < v <= 1.0:
                raise ValueError(f"endpointing {name} must be in (0, 1], not {v!r}")

    @classmethod
    def from_riva(cls, cfg) -> "EndpointingConfig":
        """From a Riva ``EndpointingConfig`` message: unset (zero or negative) fields keep defaults."""
        d = cls()
        pick = lambda v, default: v if v and v > 0 else default  # noqa: E731
        return cls(
            start_history_ms=int(pick(cfg.start_history, d.start_history_ms)),
            start_threshold=float(pick(cfg.start_threshold, d.start_threshold)),
            stop_history_ms=int(pick(cfg.stop_history, d.stop_history_ms)),
            stop_threshold=float(pick(cfg.stop_threshold, d.stop_threshold)),
            stop_history_eou_ms=int(pick(cfg.stop_history_eou, d.stop_history_eou_ms)),
            stop_threshold_eou=float(pick(cfg.stop_threshold_eou, d.stop_threshold_eou)),
        )


class _Window:
    """The last ``size`` frame flags, and how many of them are set (kept as they slide: O(1))."""

    def __init__(self, size: int):
        self.flags: deque = deque(maxlen=size)
        self.set = 0

    def push(self, flag: bool) -> None:
        if len(self.flags) == self.flags.maxlen:
            self.set -= self.flags[0]
        self.flags.append(flag)
        self.set += flag

    def at_least(self, fraction: float) -> bool:
        """Full, and at least ``fraction`` of the flags are set."""
        n = len(self.flags)
        return n == self.flags.maxlen and self.set / n >= fraction

    def clear(self) -> None:
        self.flags.clear()
        self.set = 0


class Endpointer:
    """Tracks speech start and end over the encoder frames of one stream."""

    def __init__(self, cfg: EndpointingConfig, frame_ms: float):
        self.cfg = cfg
        n = lambda ms: max(1, round(ms / frame_ms))  # noqa: E731
        self._start = _Window(n(cfg.start_history_ms))
        self._stop = _Window(n(cfg.stop_history_ms))
        self._eou = _Window(n(cfg.stop_history_eou_ms))
        self.in_speech = False
        self.eou_hint = False

    def reset(self) -> None:
        """After an endpoint: look for the start of the next utterance."""
        self._start.clear()
        self._stop.clear()
        self._eou.clear()
        self.in_speech = False
        self.eou_hint = False

    def update(self, blank_probs) -> int | None:
        """Feed new frames; returns the index (into ``blank_probs``) of the frame that ends the
        utterance, or None."""
        cfg = self.cfg
        for i, p in enumerate(blank_probs):
            blank = p >= 0.5
            if not self.in_speech:
                self._start.push(not blank)
                if self._start.at_least(cfg.start_threshold):
                    self.in_speech = True
                    self._stop.clear()
                    self._eou.clear()
                continue
            self._stop.push(blank)
            self._eou.push(blank)
            self.eou_hint = self._eou.at_least(cfg.stop_threshold_eou)
            if self._stop.at_least(cfg.stop_threshold):
                return i
        return None
