"""Benchmark of asr_streaming: Triton against the in-process runner, and mixed adapters against base.

Not a test: it prints numbers measured side by side in one run (these hosts are shared and noisy,
so compare ratios, not absolutes). For 1, 8, 32 and 64 concurrent real-time streams it reports

- through Triton: chunks per second and p50/p95/p99 chunk latency (send -> reply), each stream a
  tritonclient gRPC sequence paced like live audio (one steady chunk per chunk duration, starts
  spread over one chunk);
- in process: the same streams stepped by :class:`StreamingRunner`, one batched step per tick
  (every stream's chunk), latency = step time;

then the encoder throughput with 8 different adapters in every batch over slot 0 only.

    .venv/bin/python bench/asr_streaming.py                # builds a 6-layer d176 model from config
    .venv/bin/python bench/asr_streaming.py --model-dir model_repo/exported/demo
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from brogue.adapters import publish_adapter
from brogue.clients.triton_sequence import TritonSequence
from brogue.engine.metadata import ModelMeta
from brogue.engine.runner import StreamingRunner
from brogue.server.tritonserver import TritonProcess

REPO = Path(__file__).resolve().parent.parent


def pct(xs, q):
    return float(np.percentile(xs, q)) * 1000 if xs else float("nan")


def build_repo(root: Path, model_dir: Path | None, adapters: int, slots: int) -> tuple[Path, list[str]]:
    """A model repository in ``root``: the model (exported here if not given), adapters, asr_streaming."""
    import shutil

    if model_dir is None:
        import torch

        from brogue.export.configs import build_model
        from brogue.export.nemo_export import export_model

        torch.manual_seed(0)
        model = build_model("ctc", att_context_size=[70, 6])  # 6 x 176, 560 ms chunks
        model_dir = root / "exported" / "bench"
        export_model(model, model_dir, max_adapter_dim=32)
    else:
        shutil.copytree(model_dir, root / "exported" / "bench")
        model_dir = root / "exported" / "bench"
    meta = ModelMeta.load(model_dir)
    rng = np.random.default_rng(0)
    L, d = meta.n_layers, meta.d_model
    refs = []
    for i in range(adapters):
        arrays = {"ln_weight": np.ones((L, d), np.float32), "ln_bias": np.zeros((L, d), np.float32),
                  "down": (0.05 * rng.standard_normal((L, 32, d))).astype(np.float32),
                  "up": (0.05 * rng.standard_normal((L, d, 32))).astype(np.float32)}
        m = publish_adapter(root / "adapters", arrays, name=f"a{i}", version="v1", base_fingerprint=meta.fingerprint)
        refs.append(f"{m.name}@{m.version}")
    shutil.copytree(REPO / "model_repo" / "asr_streaming", root / "asr_streaming")
    cfg = (root / "asr_streaming" / "config.pbtxt").read_text()
    cfg = cfg.replace('string_value: "exported/demo"', 'string_value: "exported/bench"')
    cfg = cfg.replace('{ key: "BANK_SLOTS", value: { string_value: "8" } }',
                      f'{{ key: "BANK_SLOTS", value: {{ string_value: "{slots}" }} }}')
    (root / "asr_streaming" / "config.pbtxt").write_text(cfg)
    return model_dir, refs


def triton_level(url: str, n: int, seconds: float, chunk: int, chunk_s: float, refs: list[str]) -> dict:
    """``n`` paced streams through Triton; returns throughput and latency."""
    audio = (np.random.default_rng(n).standard_normal(int(seconds * 16000)) * 0.1).astype(np.float32)
    lat, errors, lock = [], [], threading.Lock()
    t0 = time.monotonic()

    def run(i):
        time.sleep(i * chunk_s / max(n, 1))  # spread the starts over one chunk
        ref = refs[i % len(refs)] if refs else ""
        mine = []
        try:
            with TritonSequence(url, 100000 * n + i, adapter=ref) as seq:
                start = time.monotonic()
                for k, pos in enumerate(range(0, len(audio), chunk)):
                    due = start + k * chunk_s
                    time.sleep(max(0.0, due - time.monotonic()))
                    t = time.perf_counter()
                    seq.send(audio[pos:pos + chunk], end=pos + chunk >= len(audio))
                    mine.append(time.perf_counter() - t)
        except Exception as e:  # noqa: BLE001 - counted and reported
            errors.append(repr(e))
        with lock:
            lat.extend(mine)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - t0
    return {"streams": n, "chunks": len(lat), "chunks_per_s": len(lat) / wall, "p50_ms": pct(lat, 50),
            "p95_ms": pct(lat, 95), "p99_ms": pct(lat, 99), "errors": len(errors)}


def runner_level(model_dir: Path, n: int, seconds: float, chunk: int, chunk_s: float, slots: list[int],
                 paced: bool = True) -> dict:
    """``n`` streams stepped in process, one batched step per chunk tick."""
    runner = StreamingRunner(model_dir, slots=max(slots) + 1 if slots else 1)
    audio = (np.random.default_rng(n).standard_normal(int(seconds * 16000)) * 0.1).astype(np.float32)
    states = [runner.open(i, slot=slots[i % len(slots)] if slots else 0) for i in range(n)]
    lat = []
    t0 = time.monotonic()
    for k, pos in enumerate(range(0, len(audio), chunk)):
        if paced:
            time.sleep(max(0.0, t0 + k * chunk_s - time.monotonic()))
        t = time.perf_counter()
        runner.step([(st, audio[pos:pos + chunk], pos + chunk >= len(audio)) for st in states])
        lat.append(time.perf_counter() - t)
    wall = time.monotonic() - t0
    chunks = n * len(lat)
    return {"streams": n, "chunks": chunks, "chunks_per_s": chunks / wall, "p50_ms": pct(lat, 50),
            "p95_ms": pct(lat, 95), "p99_ms": pct(lat, 99), "errors": 0}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", type=Path, help="an exported model (default: build one from config)")
    ap.add_argument("--streams", default="1,8,32,64")
    ap.add_argument("--seconds", type=float, default=8.0, help="audio per stream")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args(argv)
    levels = [int(x) for x in args.streams.split(",")]
    results = {"triton": [], "runner": []}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model_dir, refs = build_repo(root, args.model_dir, adapters=8, slots=9)
        meta = ModelMeta.load(model_dir)
        lat = meta.latency(None)
        chunk = lat.shift_size[1] * meta.mel.hop_length
        chunk_s = chunk / meta.sample_rate
        print(f"model: {meta.raw['source']['nemo_class']} {meta.n_layers}x{meta.d_model}, chunk {chunk_s * 1000:.0f} ms, "
              f"head {meta.head}", flush=True)
        with TritonProcess(root, models=("asr_streaming",)).start(timeout=240) as server:
            for n in levels:
                results["triton"].append(triton_level(server.grpc_url, n, args.seconds, chunk, chunk_s, refs[:4]))
                results["runner"].append(runner_level(model_dir, n, args.seconds, chunk, chunk_s, [0, 1, 2, 3]))
        # Adapter cost: unpaced encoder throughput, 32 streams, 8 adapters in every batch vs slot 0.
        base = runner_level(model_dir, 32, args.seconds, chunk, chunk_s, [0], paced=False)
        mixed = runner_level(model_dir, 32, args.seconds, chunk, chunk_s, list(range(1, 9)), paced=False)

    print(f"\n{'streams':>7} | {'Triton chunks/s':>15} {'p50':>7} {'p95':>7} {'p99':>7} {'err':>4} | "
          f"{'in-process chunks/s':>19} {'p50':>7} {'p95':>7} {'p99':>7}")
    for t, r in zip(results["triton"], results["runner"]):
        print(f"{t['streams']:>7} | {t['chunks_per_s']:>15.1f} {t['p50_ms']:>7.1f} {t['p95_ms']:>7.1f} "
              f"{t['p99_ms']:>7.1f} {t['errors']:>4} | {r['chunks_per_s']:>19.1f} {r['p50_ms']:>7.1f} "
              f"{r['p95_ms']:>7.1f} {r['p99_ms']:>7.1f}")
    print("(latencies in ms; Triton: one chunk send->reply; in-process: one batched step of all streams)")
    ratio = mixed["chunks_per_s"] / base["chunks_per_s"]
    print(f"\nunpaced, 32 streams: base {base['chunks_per_s']:.1f} chunks/s, 8 adapters per batch "
          f"{mixed['chunks_per_s']:.1f} chunks/s")
    print(f"ratio mixed_adapters/base={ratio:.2f}")
    if args.json:
        args.json.write_text(json.dumps({**results, "adapter_cost": {"base": base, "mixed": mixed, "ratio": ratio}},
                                        indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
