"""CPU and memory of the servers under load, sampled in a background thread.

A process is counted with its children (tritonserver's Python backend stubs run the model), so
``triton`` is the whole server. CPU is in cores (1.0 = one core busy), from CPU-time deltas; RSS is
the sum over the tree. Uses psutil.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import numpy as np
import psutil


def _tree(pid: int) -> list[psutil.Process]:
    try:
        p = psutil.Process(pid)
        return [p, *p.children(recursive=True)]
    except psutil.Error:
        return []


def tree_usage(pid: int) -> tuple[float, int]:
    """(CPU seconds user+system, RSS bytes) of ``pid`` and its descendants."""
    cpu, rss = 0.0, 0
    for p in _tree(pid):
        try:
            t = p.cpu_times()
            cpu += t.user + t.system
            rss += p.memory_info().rss
        except psutil.Error:
            pass
    return cpu, rss


@dataclass
class Sample:
    t: float
    cores: dict[str, float]
    rss_mb: dict[str, float]


@dataclass
class ProcSampler:
    """Samples ``pids()`` (name -> pid, re-read each time: a restarted server gets a new pid)."""

    pids: callable
    interval: float = 0.5
    samples: list[Sample] = field(default_factory=list)

    def __post_init__(self):
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="procstat")

    def _run(self):
        last = {}
        while not self._stop.is_set():
            now = time.monotonic()
            cores, rss = {}, {}
            for name, pid in self.pids().items():
                cpu, r = tree_usage(pid)
                prev = last.get(name)
                if prev and prev[0] == pid:
                    cores[name] = max(0.0, (cpu - prev[1]) / (now - prev[2]))
                rss[name] = r / 2**20
                last[name] = (pid, cpu, now)
            if cores:
                self.samples.append(Sample(now, cores, rss))
            self._stop.wait(self.interval)

    def __enter__(self) -> "ProcSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> dict:
        """Per process: mean and max cores, RSS at the first and last sample and its max (MB)."""
        out = {}
        names = sorted({n for s in self.samples for n in s.rss_mb})
        for n in names:
            c = [s.cores[n] for s in self.samples if n in s.cores]
            r = [s.rss_mb[n] for s in self.samples if n in s.rss_mb]
            if r:
                out[n] = {"cpu_cores_mean": round(sum(c) / len(c), 2) if c else None,
                          "cpu_cores_max": round(max(c), 2) if c else None,
                          "rss_mb_start": round(r[0], 1), "rss_mb_end": round(r[-1], 1), "rss_mb_max": round(max(r), 1)}
        return out


def rss_slope(samples: list[dict], key: str, skip_s: float = 300.0) -> float | None:
    """Least-squares slope of ``key`` (MB) over time, in MB per hour, past the first ``skip_s``
    seconds (warm-up: arenas and caches fill); None with fewer than 3 samples."""
    pts = [(x["t_s"], x[key]) for x in samples if x["t_s"] >= skip_s]
    if len(pts) < 3:
        return None
    t, y = np.array(pts, dtype=float).T
    return round(float(np.polyfit(t / 3600.0, y, 1)[0]), 2)
