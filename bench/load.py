"""N concurrent live streams through the gateway, and the capacity search.

:func:`run_level` keeps ``n`` callers on the line for ``seconds``: each caller plays clips back to
back, one stream (one connection) per clip, paced in real time, after a random start within
``spread_s``. Callers alternate between the WebSocket and the Riva gRPC API (``apis``) and cycle
over the bench tenants (base and one per adapter), so batches mix adapters. It reports client-side
latencies (time to first partial, end of speech to final, lag behind real time), the gateway's
per-chunk Triton round trip (from its ``/metrics`` histogram, the difference over the level),
server CPU and RSS, errors, and WER against the clips' texts.

:func:`find_capacity` doubles ``n`` until a level fails (p95 end-of-speech-to-final above the target,
or any error), then bisects between the last pass and the first failure.
"""

from __future__ import annotations

import asyncio
import random
import time
import urllib.request
from dataclasses import dataclass

import numpy as np

from .clients import StreamRecord, riva_stream, ws_stream
from .procstat import ProcSampler
from .stack import Stack


@dataclass(frozen=True)
class Clip:
    name: str
    pcm16: bytes
    text: str

    @property
    def seconds(self) -> float:
        return len(self.pcm16) / 32000


def percentiles(xs, qs=(50, 95, 99)) -> dict:
    xs = [x for x in xs if x is not None]
    return {f"p{q}_ms": (round(float(np.percentile(xs, q)) * 1000, 1) if xs else None) for q in qs}


def scrape_histogram(metrics_url: str, name: str) -> list[tuple[float, float]]:
    """Cumulative buckets ``[(le, count)]`` of histogram ``name`` on a Prometheus page."""
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(metrics_url, timeout=10).read().decode()
    for fam in text_string_to_metric_families(text):
        if fam.name == name:
            return [(float(s.labels["le"]), s.value) for s in fam.samples if s.name.endswith("_bucket")]
    return []


def histogram_percentiles(before, after, qs=(50, 95, 99)) -> dict:
    """Percentiles (ms) of the observations between two scrapes, interpolated within buckets."""
    prev = dict(before)
    buckets = [(le, c - prev.get(le, 0.0)) for le, c in after]
    total = buckets[-1][1] if buckets else 0
    out = {"count": int(total)}
    for q in qs:
        if not total:
            out[f"p{q}_ms"] = None
            continue
        want, lo, lo_c = total * q / 100, 0.0, 0.0
        for le, c in buckets:
            if c >= want:
                if le == float("inf"):
                    v = lo
                else:
                    v = lo + (le - lo) * ((want - lo_c) / (c - lo_c) if c > lo_c else 1.0)
                out[f"p{q}_ms"] = round(v * 1000, 1)
                break
            lo, lo_c = le, c
    return out


def wer_of(records: list[StreamRecord], clips: dict[str, Clip]) -> float | None:
    import jiwer

    pairs = [(clips[r.clip].text, r.transcript) for r in records if r.finished and clips[r.clip].text]
    if not pairs:
        return None
    return round(100 * jiwer.wer([p[0] for p in pairs], [p[1] for p in pairs]), 2)


async def _caller(stack: Stack, i: int, clips: list[Clip], apis: list[str], until, spread_s: float,
                  jitter_ms: float, seed: int, out: list[StreamRecord], channel, tenants=None) -> None:
    """One caller: streams clips back to back until ``until`` (a monotonic time, or a callable that
    says when to stop)."""
    rng = random.Random(seed * 100003 + i)
    tenants = tenants or stack.tenants
    tenant = tenants[i % len(tenants)]
    done = until if callable(until) else (lambda: time.monotonic() >= until)
    api = apis[i % len(apis)]
    await asyncio.sleep(rng.uniform(0, spread_s))
    k = 0
    while not done():
        clip = clips[(i + k) % len(clips)]
        k += 1
        if api == "ws":
            rec = await ws_stream(stack.ws_url, tenant.key, tenant.name, clip.name, clip.pcm16, jitter_ms=jitter_ms,
                                  seed=rng.randrange(1 << 30))
        else:
            rec = await riva_stream(stack.grpc_url, tenant.key, tenant.name, clip.name, clip.pcm16,
                                    jitter_ms=jitter_ms, seed=rng.randrange(1 << 30), channel=channel)
        out.append(rec)
        if rec.error:  # a refused or failed stream: the caller retries after a pause, like a client would
            await asyncio.sleep(0.5)


def run_level(stack: Stack, n: int, clips: list[Clip], *, seconds: float = 30.0, spread_s: float = 2.0,
              jitter_ms: float = 20.0, apis=("ws", "riva"), seed: int = 0) -> dict:
    """``n`` callers for ``seconds`` (streams that started go on to their end); returns the level's numbers."""
    import grpc

    before = scrape_histogram(stack.metrics_url, "brogue_chunk_latency_seconds")
    records: list[StreamRecord] = []

    async def main():
        channel = grpc.insecure_channel(stack.grpc_url)  # Riva streams block in threads (clients.py)
        until = time.monotonic() + seconds
        try:
            await asyncio.gather(*(_caller(stack, i, clips, list(apis), until, spread_s, jitter_ms, seed, records,
                                           channel) for i in range(n)))
        finally:
            channel.close()

    t0 = time.monotonic()
    with ProcSampler(stack.pids) as sampler:
        asyncio.run(main())
    wall = time.monotonic() - t0
    after = scrape_histogram(stack.metrics_url, "brogue_chunk_latency_seconds")
    ok = [r for r in records if r.finished]
    errors = [r for r in records if not r.finished]
    audio = sum(r.audio_s for r in ok)
    procs = sampler.summary()
    cpu = sum((p["cpu_cores_mean"] or 0) for p in procs.values())
    return {
        "streams": n, "seconds": round(wall, 1), "streams_run": len(records), "errors": len(errors),
        "error_examples": sorted({r.error for r in errors})[:5],
        "first_partial": percentiles([r.first_partial_s for r in ok]),
        "final_latency": percentiles([r.final_latency_s for r in ok]),
        "lag": percentiles([r.lag_s for r in ok]),
        "chunk_latency": histogram_percentiles(before, after),
        "audio_s_per_s": round(audio / wall, 2),
        # server CPU-seconds per audio-second: the real-time factor of the whole server side
        "rtf_cpu": round(cpu * wall / audio, 3) if audio else None,
        "processes": procs,
        "wer": wer_of(records, {c.name: c for c in clips}),
        "by_api": {a: len([r for r in ok if r.api == a]) for a in apis},
    }


def passes(level: dict, target_ms: float) -> bool:
    p95 = level["final_latency"]["p95_ms"]
    return level["errors"] == 0 and p95 is not None and p95 <= target_ms


def find_capacity(stack: Stack, clips: list[Clip], *, target_ms: float, start: int = 1, limit: int = 512,
                  log=print, **level_kw) -> tuple[int, list[dict]]:
    """The most concurrent callers that pass, and every level measured (sorted by streams)."""
    levels: dict[int, dict] = {}

    def measure(n):
        if n not in levels:
            levels[n] = run_level(stack, n, clips, **level_kw)
            lv = levels[n]
            log(f"  {n:4d} streams: p95 final {lv['final_latency']['p95_ms']} ms, errors {lv['errors']}, "
                f"{lv['streams_run']} streams run -> {'pass' if passes(lv, target_ms) else 'FAIL'}")
        return passes(levels[n], target_ms)

    good, bad, n = 0, None, start
    while n <= limit:
        if measure(n):
            good, n = n, n * 2
        else:
            bad = n
            break
    if bad is not None:
        while bad - good > max(1, good // 8):  # bisect to within 1/8 of the capacity
            mid = (good + bad) // 2
            if measure(mid):
                good = mid
            else:
                bad = mid
    return good, [levels[k] for k in sorted(levels)]
