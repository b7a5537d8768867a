"""``brogue soak``: a fixed load for many minutes, sampling what would show a leak.

Every ``sample_s`` seconds it records the RSS of the gateway and of the Triton process tree, the
gateway's live streams (``brogue_active_streams``) and the sequences holding state in
``asr_streaming`` (``brogue_asr_live_sequences``); after the load both counts must be 0. It reports
the RSS slope per hour past the warm-up (:func:`~.procstat.rss_slope`) and the range of the live
counts.
"""

from __future__ import annotations

import time

from .faults import BackgroundLoad, gateway_active_streams, summary, triton_live_sequences
from .load import Clip
from .procstat import rss_slope, tree_usage
from .stack import Stack


def soak(stack: Stack, clips: list[Clip], n: int, minutes: float, sample_s: float = 15.0, log=print) -> dict:
    """``n`` callers for ``minutes``; RSS, gateway streams and Triton sequences every ``sample_s``."""
    load = BackgroundLoad(stack, clips, n).start()
    samples = []
    t0 = time.monotonic()
    while time.monotonic() - t0 < minutes * 60:
        time.sleep(sample_s)
        _, g = tree_usage(stack.gateway.pid)
        _, t = tree_usage(stack.triton.pid)
        samples.append({"t_s": round(time.monotonic() - t0), "gateway_rss_mb": round(g / 2**20, 1),
                        "triton_rss_mb": round(t / 2**20, 1), "gateway_streams": gateway_active_streams(stack),
                        "triton_sequences": triton_live_sequences(stack), "streams_done": len(load.records),
                        "errors": sum(1 for r in load.records if r.error)})
        if len(samples) % 8 == 1:
            log(f"  {samples[-1]}")
    records = load.stop()
    time.sleep(2)
    end = {"gateway_streams": gateway_active_streams(stack), "triton_sequences": triton_live_sequences(stack)}
    warm = samples[min(len(samples) - 1, max(0, int(60 / sample_s)))]  # after the first minute
    last = samples[-1]
    growth = {k: round(last[k] - warm[k], 1) for k in ("gateway_rss_mb", "triton_rss_mb")}
    s = summary(records)
    return {"scenario": "soak", "minutes": minutes, "callers": n, **s, "rss_after_1_min": {k: warm[k] for k in growth},
            "rss_end": {k: last[k] for k in growth}, "rss_growth_mb": growth,
            "rss_slope_mb_per_hour": {k: rss_slope(samples, k) for k in growth},
            "live_range": {k: [min(x[k] or 0 for x in samples[len(samples) // 6:]),
                               max(x[k] or 0 for x in samples[len(samples) // 6:])]
                           for k in ("gateway_streams", "triton_sequences")},
            "after_load": end, "samples": samples,
            "ok": s["errors"] == 0 and end["gateway_streams"] == 0 and (end["triton_sequences"] or 0) == 0}
