"""This engine against an earlier revision's, side by side: CPU per audio second, in process.

Each trial streams ``--streams`` clips at once through a :class:`~brogue.engine.runner.StreamingRunner`
(greedy decoding, ``--threads`` ORT threads) in a fresh process, once with this checkout's ``brogue``
and once with the one of git revision ``--against`` (extracted to a temporary folder and put first
on ``PYTHONPATH``), alternately, ``--repeats`` times. It reports each side's CPU seconds per audio
second and the ratio against/this (above 1: this checkout is cheaper), as the median with the range.

Usage::

    .venv/bin/python -m bench.engine_compare model_repo/exported/demo --against 3191803 [--streams 16]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

_TRIAL = textwrap.dedent("""
    import json, sys, time
    import numpy as np
    from brogue.engine.runner import StreamingRunner
    model_dir, streams, seconds, threads = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
    r = StreamingRunner(model_dir, decoder="greedy", threads=threads, slots=1)
    rate = r.meta.sample_rate
    rng = np.random.default_rng(0)
    audios = [(rng.standard_normal(int(seconds * rate)) * 0.1).astype(np.float32) for _ in range(streams)]
    packet = r.latency(None).shift_size[1] * r.meta.mel.hop_length
    r.transcribe(audios[:1], packet=packet)  # warm-up
    c0, t0 = time.process_time(), time.perf_counter()
    r.transcribe(audios, packet=packet)
    cpu, wall = time.process_time() - c0, time.perf_counter() - t0
    print(json.dumps({"cpu_per_audio_s": cpu / (streams * seconds), "wall_s": wall,
                      "engine": __import__("brogue").__file__}))
""")


def extract(rev: str, dest: Path) -> Path:
    """``brogue`` as it was at ``rev``: its folders laid out as the installed package maps them."""
    files = subprocess.run(["git", "-C", str(REPO), "archive", rev, "brogue", "server", "export", "bench"],
                           check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=files, check=True)
    for sub in ("server", "export", "bench"):
        (dest / sub).rename(dest / "brogue" / sub)
    return dest


def trial(tree: Path | None, model_dir: Path, streams: int, seconds: float, threads: int) -> dict:
    env = {"PYTHONPATH": str(tree)} if tree else {}

    out = subprocess.run([sys.executable, "-c", _TRIAL, str(model_dir.resolve()), str(streams), str(seconds),
                          str(threads)], capture_output=True, text=True, cwd=tempfile.gettempdir(),
                         env={**os.environ, **env})
    if out.returncode:
        raise RuntimeError(f"trial failed ({'revision' if tree else 'this checkout'}):\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model_dir", type=Path)
    ap.add_argument("--against", required=True, help="git revision to compare with")
    ap.add_argument("--streams", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=8.0, help="audio per stream")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="engine-compare-") as tmp:
        old_tree = extract(args.against, Path(tmp))
        old, new = [], []
        for i in range(args.repeats):
            old.append(trial(old_tree, args.model_dir, args.streams, args.seconds, args.threads))
            new.append(trial(None, args.model_dir, args.streams, args.seconds, args.threads))
            print(f"repeat {i + 1}: {args.against} {old[-1]['cpu_per_audio_s'] * 1e3:.2f} ms CPU per audio s, "
                  f"this checkout {new[-1]['cpu_per_audio_s'] * 1e3:.2f}", flush=True)
    ratios = sorted(o["cpu_per_audio_s"] / n["cpu_per_audio_s"] for o, n in zip(old, new))
    report = {"model": str(args.model_dir), "against": args.against, "streams": args.streams,
              "threads": args.threads, "seconds": args.seconds,
              "against_cpu_per_audio_s": [o["cpu_per_audio_s"] for o in old],
              "this_cpu_per_audio_s": [n["cpu_per_audio_s"] for n in new],
              "ratio_against_over_this": {"median": statistics.median(ratios), "range": [ratios[0], ratios[-1]]}}
    print(json.dumps(report["ratio_against_over_this"]))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
