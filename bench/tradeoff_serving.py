"""The serving half of :mod:`.tradeoff`: memory and throughput of 8 adapter tenants against 8 tenants on
full fine-tunes, in one real tritonserver behind one gateway (:class:`.stack.Stack`, greedy decoding).

The adapter tenants use the five trained adapters and three renamed copies, in one bank of the
base model: one python-backend process, whose batches mix them. The full-model tenants use the five
fine-tunes and three renamed copies: eight model versions, eight processes, each batching only its
own tenant's streams. Memory is each process's RSS once every tenant has streamed (psutil), beside
the memory budget's estimate (:func:`brogue.models.estimate_footprint`); an adapter's own cost is its
bank slot, allocated when the base model loads.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import statistics
import time
from pathlib import Path

import numpy as np

from brogue.models import estimate_footprint
from brogue.server.model_fleet import served_settings
from brogue.server.tenants import key_hash
from brogue.server.triton_models import VersionModels

from .clients import pcm16_of, ws_stream
from .stack import ADMIN_TOKEN, Stack

REPO = Path(__file__).resolve().parent.parent
TENANTS = 8
STREAMS_PER_TENANT = 4
RUNS = 3


def _stub_rss() -> dict[str, int]:
    """RSS (bytes) of every python-backend stub by Triton model instance name (``NAME_0_0``)."""
    import psutil

    out = {}
    for p in psutil.process_iter(["name", "cmdline"]):
        cmd = p.info["cmdline"] or []
        if cmd and cmd[0].endswith("triton_python_backend_stub") and len(cmd) > 9:
            try:
                out[cmd[-2]] = p.memory_info().rss
            except psutil.NoSuchProcess:
                continue
    return out


def _clips(data: Path, n: int) -> list[bytes]:
    """``n`` streams of audio, each three base-test clips end to end (about 9 s)."""
    import soundfile as sf

    rows = [json.loads(line) for line in (data / "base_test.json").read_text().splitlines() if line.strip()]
    out = []
    for i in range(n):
        parts = [sf.read(data / rows[(3 * i + k) % len(rows)]["audio_filepath"], dtype="float32")[0] for k in range(3)]
        out.append(pcm16_of(np.concatenate(parts)))
    return out


def _prepare(work: Path, sets) -> Stack:
    src = work / "serve-src"
    if src.exists():
        shutil.rmtree(src)
    (src / "exported").mkdir(parents=True)
    shutil.copytree(REPO / "model_repo" / "exported" / "demo", src / "exported" / "demo")
    shutil.copytree(REPO / "model_repo" / "asr_streaming", src / "asr_streaming")
    for name in sets:
        shutil.copytree(work / "adapters" / name / "tradeoff", src / "adapters" / name / "tradeoff")
    stack = Stack(repo=src, workdir=work / "serve", adapters=TENANTS, bank_slots=16, decoder="greedy").prepare()
    adapter_refs = [t.adapter for t in stack.tenants if t.adapter]
    from brogue.models import ModelRef, ModelStore

    store = ModelStore(stack.root / "models")
    model_refs = []
    for i in range(TENANTS):
        name = sets[i % len(sets)]
        ref = ModelRef(name if i < len(sets) else f"{name}-copy{i}", "v1")
        store.publish_dir(work / "models" / name / "v1", ref, description=f"the {name} fine-tune")
        model_refs.append(str(ref))
    lines = [f'admin_token_sha256 = "{key_hash(ADMIN_TOKEN)}"', ""]
    for kind, refs in (("a", adapter_refs), ("f", model_refs)):
        for i, ref in enumerate(refs):
            key = "adapter" if kind == "a" else "model"
            lines += [f"[tenants.{kind}{i}]", f'api_keys_sha256 = ["{key_hash(f"bench-{kind}{i}")}"]',
                      f'{key} = "{ref}"', "max_streams = 64", "max_stream_seconds = 36000", ""]
    stack.tenants_file.write_text("\n".join(lines))
    stack.adapter_refs, stack.model_refs = adapter_refs, model_refs
    return stack


async def _round(stack: Stack, kind: str, clips: list[bytes]) -> tuple[float, list]:
    jobs = []
    for i in range(TENANTS):
        for k in range(STREAMS_PER_TENANT):
            clip = clips[(i * STREAMS_PER_TENANT + k) % len(clips)]
            jobs.append(ws_stream(stack.ws_url, f"bench-{kind}{i}", f"{kind}{i}", f"c{k}", clip, realtime=False,
                                  timeout=600))
    t0 = time.monotonic()
    records = await asyncio.gather(*jobs)
    return time.monotonic() - t0, records


def measure(data: Path, work: Path, sets) -> dict:
    """Serve the trained adapters and fine-tunes in ``work`` and return the memory and throughput figures."""
    clips = _clips(data, TENANTS * STREAMS_PER_TENANT)
    audio_s = sum(len(c) / 32000 for c in clips) * TENANTS * STREAMS_PER_TENANT / len(clips)
    stack = _prepare(work, list(sets))
    stack.start_triton()
    stack.start_gateway()
    try:
        before = _stub_rss()
        base_rss0 = before.get("asr_streaming_0_0", 0)
        # warm-up: every tenant streams once (adapters into the bank, model versions loaded)
        first_round = {}
        for kind in ("a", "f"):
            first_round[kind], recs = asyncio.run(_round(stack, kind, clips))
            errors = [r.error for r in recs if r.error]
            if errors:
                raise RuntimeError(f"warm-up of the {kind} tenants failed: {errors[:3]}")
        rss = _stub_rss()
        timings = {"a": [], "f": []}
        for _ in range(RUNS):
            for kind in ("a", "f"):
                seconds, recs = asyncio.run(_round(stack, kind, clips))
                errors = [r.error for r in recs if r.error]
                if errors:
                    raise RuntimeError(f"a {kind} round failed: {errors[:3]}")
                timings[kind].append(seconds)
    finally:
        stack.stop()
    versions = {ref: rss.get(f"asr_streaming@{ref}_0_0", 0) for ref in stack.model_refs}
    base_rss = rss.get("asr_streaming_0_0", 0)
    meta = stack.meta
    settings = served_settings(VersionModels(stack.root).settings())
    estimate = {"base": estimate_footprint(stack.root / "exported" / "demo", **settings).total,
                "version": estimate_footprint(work / "models" / sets[0] / "v1", **settings).total}
    slot_bytes = meta.n_layers * (2 * meta.d_model + 2 * meta.max_adapter_dim * meta.d_model) * 4

    def throughput(kind):
        xs = sorted(audio_s / t for t in timings[kind])
        return {"median_x_realtime": round(statistics.median(xs), 2), "range": [round(xs[0], 2), round(xs[-1], 2)],
                "runs_seconds": [round(t, 2) for t in timings[kind]]}

    ratios = sorted(f / a for a, f in zip(timings["a"], timings["f"]))  # full's seconds over adapters', run by run
    return {
        "adapter_over_full_throughput": {"median": round(statistics.median(ratios), 2),
                                         "range": [round(ratios[0], 2), round(ratios[-1], 2)]},
        "tenants": TENANTS, "streams_per_tenant": STREAMS_PER_TENANT, "audio_seconds_per_round": round(audio_s, 1),
        "adapter": {"base_process_rss_mb": round(base_rss / 2**20, 1),
                    "base_process_rss_mb_before_streams": round(base_rss0 / 2**20, 1),
                    "base_process_budget_estimate_mb": round(estimate["base"] / 2**20, 1),
                    "per_adapter_mb": round(slot_bytes / 2**20, 2),  # its bank slot (allocated at load)
                    "first_round_seconds": round(first_round["a"], 2),  # includes loading 8 adapters
                    "throughput": throughput("a")},
        "full": {"process_rss_mb": {k: round(v / 2**20, 1) for k, v in versions.items()},
                 "per_model_mb": round(statistics.median(versions.values()) / 2**20, 1) if versions else None,
                 "budget_estimate_mb": round(estimate["version"] / 2**20, 1),
                 "first_round_seconds": round(first_round["f"], 2),  # includes loading 8 versions, one at a time
                 "throughput": throughput("f")},
    }


def table_rows(results: dict, sets) -> list[dict]:
    """One row per set and method: the figures docs/models.md tabulates."""
    rows = []
    base = results.get("eval/base", {})
    serve = results.get("serve", {})
    for name in sets:
        for kind in ("adapter", "full"):
            t, e = results.get(f"train/{kind}/{name}", {}), results.get(f"eval/{kind}/{name}", {})
            s = serve.get(kind, {})
            rows.append({
                "set": name, "method": kind,
                "own_wer": e.get("own_wer"), "own_wer_base_model": base.get(f"{name}_test"),
                "base_wer": e.get("base_wer"), "base_wer_base_model": base.get("base_test"),
                "train_seconds": t.get("train_seconds"), "disk_mb": round(t.get("disk_bytes", 0) / 1e6, 2),
                "serving_mb": s.get("per_adapter_mb") if kind == "adapter" else s.get("per_model_mb"),
                "throughput_x_realtime_8_tenants": s.get("throughput", {}).get("median_x_realtime"),
            })
    return rows
