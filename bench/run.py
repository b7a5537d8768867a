"""``brogue bench``: capacity, latency at fixed loads, and the side-by-side ratios, in one run.

It starts its own tritonserver and gateway on a copy of the model repository (:class:`Stack`),
measures, stops them, runs the peers (NeMo, sherpa-onnx) on the machine alone, and writes
``bench.json``, ``bench.md``, ``latency.png`` and ``throughput.png``. Its output ends with one
``ratio NAME=<median> (<min>–<max>)`` line per comparison (paired per round, :func:`compare.ratios`)
and one ``capacity streams=<n> per_core=<n / cores>`` line.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np

from .load import Clip, find_capacity, run_level


def load_clips(manifest: Path, limit: int | None = None) -> list[Clip]:
    """A NeMo manifest's rows as 16 kHz PCM16 clips (relative paths from the manifest's folder)."""
    from brogue.clients.eval import load_audio

    clips = []
    for line in Path(manifest).read_text().splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        path = Path(row["audio_filepath"])
        path = path if path.is_absolute() else Path(manifest).parent / path
        x = load_audio(str(path), 16000)
        clips.append(Clip(path.stem, (np.clip(x, -1, 1) * 32767).astype("<i2").tobytes(), row.get("text", "")))
        if limit and len(clips) >= limit:
            break
    if not clips:
        raise ValueError(f"{manifest}: no clips")
    return clips


def machine() -> dict:
    import psutil

    model = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                  if l.startswith("model name")), platform.processor())
    return {"cpus": os.cpu_count(), "cpu_model": model, "memory_gb": round(psutil.virtual_memory().total / 2**30),
            "python": platform.python_version(), "host": platform.node()}


def run_bench(repo: Path, clips_manifest: Path, out_dir: Path, *, model: str = "demo", adapters: int = 8,
              decoder: str = "auto", level_seconds: float = 30.0, target_ms: float | None = None, start: int = 1,
              limit: int = 256, fixed: tuple[int, ...] = (1, 8, 32), compare_streams: int = 8, rounds: int = 3,
              nemo: Path | None = None, sherpa: bool = True, capacity_search: bool = True,
              jitter_ms: float = 20.0, spread_s: float = 2.0, apis=("ws", "riva"), log=print) -> dict:
    from . import compare, report
    from .stack import Stack

    clips = load_clips(clips_manifest)
    with tempfile.TemporaryDirectory(prefix="brogue-bench-") as tmp:
        stack = Stack(Path(repo), Path(tmp), model=model, adapters=adapters, decoder=decoder)
        with stack:
            meta = stack.meta
            lat = meta.latency(None)
            chunk_ms = round(lat.shift_size[1] * meta.mel.hop_length * 1000 / meta.sample_rate)
            target = target_ms if target_ms is not None else 100.0 + chunk_ms
            served = decoder if decoder != "auto" else ("lm" if meta.ctc_lm and meta.head == "ctc"
                                                        else "greedy")
            log(f"model {model}: {meta.n_layers}x{meta.d_model} {meta.head}, {served} decoding, chunk {chunk_ms} ms; "
                f"target p95 end-of-speech-to-final {target:.0f} ms; {len(clips)} clips; {len(stack.tenants)} tenants")
            kw = dict(seconds=level_seconds, spread_s=spread_s, jitter_ms=jitter_ms, apis=apis)
            run_level(stack, 1, clips, seconds=5, apis=apis)  # warm up: sessions, adapters in the bank
            capacity, levels = None, []
            if capacity_search:
                log("capacity search:")
                capacity, levels = find_capacity(stack, clips, target_ms=target, start=start, limit=limit, log=log,
                                                 **kw)
            have = {lv["streams"] for lv in levels}
            for n in fixed:
                if n not in have:
                    lv = run_level(stack, n, clips, **kw)
                    log(f"  {n:4d} streams: p95 final {lv['final_latency']['p95_ms']} ms, errors {lv['errors']}")
                    levels.append(lv)
            levels.sort(key=lambda lv: lv["streams"])
            log(f"comparisons ({compare_streams} streams at a time, unpaced, {rounds} interleaved rounds):")
            model_dir = stack.root / "exported" / model
            paths = {"base": lambda: compare.gateway_throughput(stack, clips, compare_streams),
                     "mixed": lambda: compare.gateway_throughput(stack, clips, compare_streams, mixed=True),
                     "direct_triton": lambda: compare.direct_triton_throughput(stack, clips, compare_streams),
                     "in_process": lambda: compare.in_process_throughput(
                         model_dir, clips, compare_streams, threads=stack.intra_op_threads, decoder=decoder)}
            per_round = []
            for rnd in range(rounds):
                per_round.append({})
                for name, fn in paths.items():
                    r = per_round[-1][name] = fn()
                    log(f"  round {rnd + 1} {name}: {r['audio_s_per_s']} audio s/s, {r['cpu_per_audio_s']} CPU s "
                        f"per audio s, WER {r['wer']}")
        # After the servers stop: the peers get the machine to itself, as they would, once each.
        peers = {}
        if nemo is not None:
            peers["nemo_pytorch"] = compare.nemo_throughput(nemo, clips, compare_streams)
        if sherpa and nemo is not None and meta.head == "ctc":  # sherpa runs NeMo CTC models from their .nemo
            peers["sherpa_onnx"] = compare.sherpa_throughput(Path(repo) / "exported" / model, clips, compare_streams,
                                                             nemo)
        for name, r in peers.items():
            log(f"  {name}: {r['audio_s_per_s']} audio s/s, {r['cpu_per_audio_s']} CPU s per audio s, WER {r['wer']}")
            for rd in per_round:
                rd[name] = r
        # NeMo and sherpa-onnx decode greedily: their ratios hold against greedy Brogue only.
        skip = () if served == "greedy" else tuple(k for k in compare.RATIOS if "nemo" in k or "sherpa" in k)
        results = compare.summarise(per_round)
        result = {
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "command": " ".join(["brogue", "bench", *sys.argv[2:]]) if sys.argv[1:2] == ["bench"] else " ".join(sys.argv),
            "machine": machine(), "model": model,
            "model_desc": f"{meta.n_layers}x{meta.d_model} FastConformer-{meta.head.upper()}, {len(meta.tokens)} tokens",
            "chunk_ms": chunk_ms, "target_ms": target, "level_seconds": level_seconds, "jitter_ms": jitter_ms,
            "spread_s": spread_s, "apis": list(apis), "tenants": [t.name for t in stack.tenants],
            "decoder": served, "clips": len(clips), "capacity": capacity,
            "capacity_per_core": round(capacity / os.cpu_count(), 1) if capacity is not None else None,
            "levels": levels, "compare_streams": compare_streams, "compare_clips": len(clips), "rounds": rounds,
            "comparisons": results, "per_round": per_round, "ratios": compare.ratios(per_round, skip=skip),
        }
    files = report.write(result, Path(out_dir))
    log("wrote " + ", ".join(str(f) for f in files))
    return result
