"""How many concurrent streams one engine computes in real time: the GPU capacity benchmark.

For each chunk size asked (``--chunk-ms 320,160``: the model latency whose chunk is that long), N
streams of synthetic speech-band audio step together, one chunk of audio each per round, through one
:class:`~brogue.engine.runner.StreamingRunner` (mel front end, state pool, encoder, greedy decoding,
all of it). A round's wall time is the compute time of every stream's chunk in it. N is doubled from
``--start`` until a round's p95 passes the budget, then bisected; the budget is the chunk's own
duration and at most ``--p95-ms`` (100 ms by default). At the largest N that holds, it measures the
base model (every stream on slot 0) and mixed adapters (streams spread over ``--adapters`` random
adapters and the base) alternately, three times each, and reports:

- streams, per-chunk compute p50 / p95 (and the share spent in the encoder step);
- device memory: the weights, the state pool per stream and in all, the peak;
- mixed adapters / base, as rounds per second (median of 3, with the range).

It stops searching when ``--budget-s`` (420 s) is spent and reports what it found by then.

A GPU host without NeMo or ONNX Runtime can run it on the 0.6 B shape: ``--random-weights`` fills an
export's ``weights.bin`` with random values of the shapes ``weights.json`` lists, so only the small
files (model.json, weights.json, the TorchScript ``*.ts`` steps) need to be carried there. Usage::

    python -m bench.gpu_streams EXPORT_DIR --provider torch-cuda [--random-weights] [--json OUT]
    python -m bench.gpu_streams model_repo/exported/demo --provider cpu --chunk-ms 0 --start 2 --budget-s 60
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

MiB = 1 << 20


def random_weights(src: Path, dst: Path, seed: int = 0) -> Path:
    """A copy of export ``src`` in ``dst`` whose ``weights.bin`` holds random values (std 0.02, the
    shapes and dtypes ``weights.json`` lists): the model's compute, without its weights."""
    dst.mkdir(parents=True, exist_ok=True)
    index = json.loads((src / "weights.json").read_text())
    for f in src.iterdir():
        if f.is_file() and f.name not in ("weights.bin", "weights.json"):
            shutil.copy2(f, dst / f.name)
    rng = np.random.default_rng(seed)
    sha, size = hashlib.sha256(), 0
    with open(dst / "weights.bin", "wb") as out:
        for name, t in sorted(index["tensors"].items(), key=lambda kv: kv[1]["offset"]):
            if t["offset"] > size:
                pad = b"\0" * (t["offset"] - size)
                out.write(pad)
                sha.update(pad)
                size += len(pad)
            dtype = np.dtype(t["dtype"])
            n = int(np.prod(t["shape"]))
            values = (rng.standard_normal(n, dtype=np.float32) * 0.02).astype(dtype) if dtype.kind == "f" \
                else np.zeros(n, dtype)
            data = values.tobytes()
            out.write(data)
            sha.update(data)
            size += len(data)
    index.update(bytes=size, sha256=sha.hexdigest())
    (dst / "weights.json").write_text(json.dumps(index, separators=(",", ":")) + "\n")
    return dst


class Timed:
    """Wraps the encoder's ``run`` to add up the time spent in encoder steps."""

    def __init__(self, encoder, synchronize):
        self.inner, self.seconds, self.sync = encoder.run, 0.0, synchronize
        encoder.run = self

    def __call__(self, *args):
        t = time.perf_counter()
        out = self.inner(*args)
        self.sync()
        self.seconds += time.perf_counter() - t
        return out


class Load:
    """N streams on one runner, stepped one chunk per round."""

    def __init__(self, runner, latency, n: int, slots: list[int], seed: int = 0):
        self.runner, self.latency = runner, latency
        hop = runner.meta.mel.hop_length
        self.first = latency.chunk_size[0] * hop
        self.shift = latency.shift_size[1] * hop
        rng = np.random.default_rng(seed)
        self.audio = (rng.standard_normal(self.first + 64 * self.shift) * 0.1).astype(np.float32)
        self.streams = [runner.open(i, slot=slots[i % len(slots)], latency=latency.name) for i in range(n)]
        self.pos = 0

    def round(self) -> float:
        """One chunk for every stream; returns the round's wall time in seconds."""
        n = self.first if self.pos == 0 else self.shift
        if self.pos + n > len(self.audio):
            self.pos = self.first  # loop the audio; the streams go on
        samples = self.audio[self.pos:self.pos + n]
        self.pos += n
        t = time.perf_counter()
        self.runner.step([(st, samples, False) for st in self.streams])
        self.runner.encoder.memory.synchronize()
        return time.perf_counter() - t

    def close(self) -> None:
        for st in self.streams:
            self.runner.close(st)


def measure(runner, latency, n: int, slots: list[int], rounds: int, timer: Timed) -> dict:
    load = Load(runner, latency, n, slots)
    try:
        load.round()  # the first chunk (first-chunk graph) and warm-up
        load.round()
        timer.seconds = 0.0
        times = [load.round() for _ in range(rounds)]
    finally:
        load.close()
    return {"streams": n, "p50_ms": 1e3 * float(np.percentile(times, 50)),
            "p95_ms": 1e3 * float(np.percentile(times, 95)),
            "encoder_share": timer.seconds / sum(times), "rounds_per_s": len(times) / sum(times)}


def capacity(runner, latency, args, deadline: float, timer: Timed, log) -> tuple[dict | None, list[dict]]:
    """The largest N whose round p95 keeps within the budget (doubling, then bisecting)."""
    budget_ms = min(latency.chunk_ms, args.p95_ms)
    tried, best = [], None
    lo, hi, n = 0, None, args.start
    while time.monotonic() < deadline:
        if n > runner.pool.rows:
            hi = runner.pool.rows + 1
            n = runner.pool.rows
            if lo >= n:
                break
        r = measure(runner, latency, n, [0], args.rounds, timer)
        r["holds"] = r["p95_ms"] <= budget_ms
        tried.append(r)
        log(f"  {latency.name} ({latency.chunk_ms} ms): {n} streams  p50 {r['p50_ms']:.1f} ms  "
            f"p95 {r['p95_ms']:.1f} ms  {'holds' if r['holds'] else 'misses'} ({budget_ms} ms)")
        if r["holds"]:
            lo, best = n, r
        else:
            hi = n
        if hi is None:
            n *= 2
        elif hi - lo <= max(1, lo // 16):
            break
        else:
            n = (lo + hi) // 2
    return best, tried


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model_dir", type=Path)
    ap.add_argument("--provider", default="torch-cuda", help="cpu | cuda | tensorrt | torch-cuda | torch-cpu")
    ap.add_argument("--chunk-ms", default="320,160",
                    help="chunk sizes to measure (the model latency with that chunk); 0 = the default latency")
    ap.add_argument("--random-weights", action="store_true", help="random values in place of weights.bin")
    ap.add_argument("--max-streams", type=int, default=1024, help="state-pool rows")
    ap.add_argument("--max-batch", type=int, default=1024, help="rows per encoder run")
    ap.add_argument("--start", type=int, default=64, help="streams in the first trial")
    ap.add_argument("--rounds", type=int, default=12, help="measured rounds per trial")
    ap.add_argument("--p95-ms", type=float, default=100.0, help="the p95 per-chunk compute budget")
    ap.add_argument("--adapters", type=int, default=4, help="random adapters mixed in at capacity")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--budget-s", type=float, default=420.0, help="stop searching after this long")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    t0 = time.monotonic()
    deadline = t0 + args.budget_s

    def log(msg):
        print(msg, flush=True)

    from brogue.engine.runner import StreamingRunner

    with tempfile.TemporaryDirectory(prefix="gpu-streams-") as tmp:
        model_dir = args.model_dir
        if args.random_weights:
            log(f"random weights for {model_dir} ...")
            model_dir = random_weights(model_dir, Path(tmp) / "model")
        meta = json.loads((model_dir / "model.json").read_text())
        by_ms = {l["chunk_ms"]: l["name"] for l in meta["latencies"]}
        wanted = [int(x) for x in args.chunk_ms.split(",") if x.strip()]
        names = [by_ms.get(ms) if ms else meta["default_latency"] for ms in wanted]
        missing = [ms for ms, name in zip(wanted, names) if name is None]
        names = [n for n in names if n]
        report = {"model": str(args.model_dir), "provider": args.provider, "random_weights": args.random_weights,
                  "device": device_name(args.provider), "not_in_model_ms": missing, "latencies": []}
        if missing:
            log(f"the model has no latency with {missing} ms chunks (it has {sorted(by_ms)}): not measured")
        if not names:
            print(json.dumps(report, indent=1))
            return 1
        runner = StreamingRunner(model_dir, slots=1 + args.adapters, provider=args.provider, threads=args.threads,
                                 decoder="greedy", latencies=names, max_streams=args.max_streams,
                                 max_batch=args.max_batch, verify_weights=False)
        rng = np.random.default_rng(1)
        m = runner.meta
        for s in range(1, 1 + args.adapters):
            runner.bank.write(s, 1 + 0.1 * rng.standard_normal((m.n_layers, m.d_model)),
                              0.1 * rng.standard_normal((m.n_layers, m.d_model)),
                              0.05 * rng.standard_normal((m.n_layers, m.max_adapter_dim, m.d_model)),
                              0.05 * rng.standard_normal((m.n_layers, m.d_model, m.max_adapter_dim)))
        timer = Timed(runner.encoder, runner.encoder.memory.synchronize)
        report["memory"] = memory_report(runner)
        log(f"loaded in {time.monotonic() - t0:.1f} s on {report['device']}: {json.dumps(report['memory'])}")
        for name in names:
            lat = runner.latency(name)
            measure(runner, lat, args.start, [0], 3, timer)  # warm-up, not counted: first runs are slow
            left = deadline - time.monotonic()
            best, tried = capacity(runner, lat, args, time.monotonic() + left / (1 + names[::-1].index(name)),
                                   timer, log)
            entry = {"latency": name, "chunk_ms": lat.chunk_ms, "budget_ms": min(lat.chunk_ms, args.p95_ms),
                     "tried": tried, "capacity": best}
            if best is not None:
                n = best["streams"]
                base, mixed = [], []
                for _ in range(3):
                    base.append(measure(runner, lat, n, [0], args.rounds, timer)["rounds_per_s"])
                    mixed.append(measure(runner, lat, n, list(range(1 + args.adapters)), args.rounds,
                                         timer)["rounds_per_s"])
                ratios = sorted(b and x / b for x, b in zip(mixed, base))
                entry["mixed_over_base"] = {"median": ratios[1], "range": [ratios[0], ratios[-1]]}
                entry["peak_bytes"] = peak_bytes(runner)
            report["latencies"].append(entry)
        report["seconds"] = round(time.monotonic() - t0, 1)
    print_table(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    return 0


def device_name(provider: str) -> str:
    if "cuda" in provider or provider == "tensorrt":
        import torch

        return torch.cuda.get_device_name()
    import platform

    return f"CPU ({platform.processor() or platform.machine()})"


def memory_report(runner) -> dict:
    enc = runner.encoder
    return {"weights_on_device_bytes": getattr(enc.backend, "device_bytes", 0),
            "state_per_stream_bytes": enc.pool.row_bytes, "state_pool_bytes": enc.pool.bytes,
            "pool_rows": enc.pool.rows, "bank_bytes": enc.bank.bytes}


def peak_bytes(runner) -> int | None:
    mem = runner.encoder.memory
    if getattr(mem, "device", None) is not None and str(mem.device).startswith("cuda"):
        return int(mem.torch.cuda.max_memory_allocated(mem.device))
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    except ImportError:
        return None


def print_table(report: dict) -> None:
    m = report["memory"]
    print(f"\n{report['device']}, provider {report['provider']}"
          f"{' (random weights)' if report['random_weights'] else ''}: weights on device "
          f"{m['weights_on_device_bytes'] / MiB:.0f} MiB, state {m['state_per_stream_bytes'] / MiB:.2f} MiB "
          f"per stream ({m['pool_rows']} rows: {m['state_pool_bytes'] / MiB:.0f} MiB)")
    print("| chunk | streams | p50 ms | p95 ms | encoder share | peak memory MiB | mixed / base (median, range) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for e in report["latencies"]:
        c = e["capacity"]
        if c is None:
            print(f"| {e['chunk_ms']} ms | none within {e['budget_ms']:g} ms | | | | | |")
            continue
        r = e["mixed_over_base"]
        print(f"| {e['chunk_ms']} ms | {c['streams']} | {c['p50_ms']:.1f} | {c['p95_ms']:.1f} | "
              f"{c['encoder_share']:.2f} | {(e['peak_bytes'] or 0) / MiB:.0f} | "
              f"{r['median']:.2f} ({r['range'][0]:.2f}-{r['range'][1]:.2f}) |")
    for ms in report["not_in_model_ms"]:
        print(f"| {ms} ms | not measured: no such latency in the model | | | | | |")


if __name__ == "__main__":
    sys.exit(main())
