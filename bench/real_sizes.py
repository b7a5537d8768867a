"""What an exported model costs to serve: disk, memory per latencies served, and real-time streams.

For one export (the demo model, or ``recipes/nvidia_shapes.py``'s 114 M and 0.6 B shapes):

- **disk**: the shared ``weights.bin`` and the graphs' own bytes;
- **memory**: the RSS a :class:`~brogue.engine.runner.StreamingRunner` adds when it loads 1 latency
  and when it loads every latency, each in a fresh process, with the weights shared (one read-only
  mapping, prepacking off) and private (each session its own prepacked copy, ORT's default);
- **streams in real time** at one latency: N streams step together, chunk after chunk, on
  ``threads`` ORT threads; a chunk round must take no longer than the chunk's audio. The largest N of
  ``--streams`` that keeps up is reported, for shared and private weights, measured alternately in
  the same run (median of ``--rounds``, with the range).

Usage::

    .venv/bin/python -m bench.real_sizes EXPORT_DIR [--latency 70_6] [--streams 1,2,4,8] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np

_PROBE = textwrap.dedent("""
    import json, sys, psutil
    from brogue.engine.runner import StreamingRunner
    p = psutil.Process()
    before = p.memory_info().rss
    r = StreamingRunner(sys.argv[1], latencies=sys.argv[2] or None, weights=sys.argv[3], threads=1)
    print(json.dumps({"rss_added": p.memory_info().rss - before, "rss": p.memory_info().rss,
                      "sessions": len(r.encoder.backend.sessions)}))
""")


def disk(model_dir: Path) -> dict:
    meta = json.loads((model_dir / "model.json").read_text())
    graphs = sum((model_dir / f).stat().st_size for f in meta["files"] if f.endswith(".onnx"))
    w = meta.get("weights") or {}
    return {"weights_bin": w.get("bytes", 0), "graphs": graphs, "files": len(meta["files"])}


def rss(model_dir: Path, latencies: str, weights: str) -> dict:
    """RSS added by loading a runner in a fresh process; not run when private copies would not fit."""
    import psutil

    meta = json.loads((model_dir / "model.json").read_text())
    graphs = 2 * (len(latencies.split(",")) if latencies else len(meta["latencies"]))
    need = graphs * meta.get("weights", {}).get("bytes", 0) if weights == "private" else 0
    if need > 0.8 * psutil.virtual_memory().available:
        return {"not_measured": f"{graphs} private copies need about {need / 1e9:.1f} GB, "
                                f"{psutil.virtual_memory().available / 1e9:.1f} GB available"}
    r = subprocess.run([sys.executable, "-c", _PROBE, str(model_dir), latencies, weights], capture_output=True,
                       text=True, check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


def chunk_round_seconds(runner, latency: str, streams: int, chunks: int = 4) -> float:
    """Median wall time of one steady chunk round for ``streams`` streams stepped together."""
    lat = runner.latency(latency)
    hop = runner.meta.mel.hop_length
    first = lat.chunk_size[0] * hop
    step = lat.shift_size[1] * hop
    rng = np.random.default_rng(0)
    states = [runner.open(i, latency=latency) for i in range(streams)]
    runner.step([(st, (rng.standard_normal(first) * 0.1).astype(np.float32), False) for st in states])
    times = []
    for _ in range(chunks):
        audio = [(rng.standard_normal(step) * 0.1).astype(np.float32) for _ in states]
        t = time.perf_counter()
        runner.step([(st, a, False) for st, a in zip(states, audio)])
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def realtime(model_dir: Path, latency: str, streams: list[int], rounds: int, threads: int) -> dict:
    from brogue.engine.runner import StreamingRunner

    runners = {mode: StreamingRunner(model_dir, latencies=latency, weights=mode, threads=threads, decoder="greedy")
               for mode in ("shared", "private")}
    lat = runners["shared"].latency(latency)
    chunk_s = lat.shift_size[1] * runners["shared"].meta.mel.hop_length / runners["shared"].meta.sample_rate
    table = {mode: {} for mode in runners}
    for n in streams:
        samples = {mode: [] for mode in runners}
        for _ in range(rounds):  # alternate the two modes within each round
            for mode, runner in runners.items():
                samples[mode].append(chunk_round_seconds(runner, latency, n))
        for mode, s in samples.items():
            table[mode][n] = {"median_s": round(statistics.median(s), 4), "min_s": round(min(s), 4),
                              "max_s": round(max(s), 4), "keeps_up": statistics.median(s) <= chunk_s}
    best = {mode: max([n for n, r in t.items() if r["keeps_up"]], default=0) for mode, t in table.items()}
    return {"latency": latency, "chunk_s": chunk_s, "threads": threads, "rounds": rounds, "per_streams": table,
            "realtime_streams": best}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model_dir", type=Path)
    ap.add_argument("--latency", default="", help="latency for the real-time test (default: the model's)")
    ap.add_argument("--streams", default="1,2,4,8,16")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    meta = json.loads((a.model_dir / "model.json").read_text())
    latency = a.latency or meta["default_latency"]
    out = {"model": meta["name"], "source": meta["source"], "export_seconds": meta.get("export_seconds"),
           "checks": meta["checks"], "disk": disk(a.model_dir), "rss": {}}
    for mode in ("shared", "private"):
        out["rss"][mode] = {"one_latency": rss(a.model_dir, latency, mode), "all_latencies": rss(a.model_dir, "", mode)}
    out["realtime"] = realtime(a.model_dir, latency, [int(n) for n in a.streams.split(",")], a.rounds, a.threads)
    text = json.dumps(out, indent=2)
    print(text)
    if a.json:
        a.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
