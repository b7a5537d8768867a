"""``brogue bench``, ``brogue faults`` and ``brogue soak``: performance and reliability runs."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .common import DEFAULT_MODEL_REPO, REPO, _fail, app, console


def _clips_default() -> Path:
    return REPO / "tests" / "data" / "demo" / "manifest.json"


@app.command()
def bench(
    model_repository: Path = typer.Option(DEFAULT_MODEL_REPO, help="Model repository to copy and serve."),
    model: str = typer.Option("demo", help="Exported model in MODEL_REPOSITORY/exported/."),
    clips: Path = typer.Option(None, help="NeMo manifest of the clips to stream (default: the test clips)."),
    out: Path = typer.Option(Path("bench-results"), help="Folder for bench.json, bench.md and the plots."),
    level_seconds: float = typer.Option(30.0, help="Seconds of load per level."),
    target_ms: Optional[float] = typer.Option(None, help="p95 end-of-speech-to-final target (default chunk + 100 ms)."),
    limit: int = typer.Option(256, help="Most streams to try."),
    levels: str = typer.Option("1,8,32", help="Levels always measured, besides the capacity search."),
    compare_streams: int = typer.Option(8, help="Streams at a time in the throughput comparisons."),
    nemo: Optional[Path] = typer.Option(None, help="The model's .nemo, to compare with NeMo's PyTorch streaming "
                                                   "(default: MODEL_REPOSITORY/MODEL.nemo if present)."),
    jitter_ms: float = typer.Option(20.0, help="Network jitter added to each audio frame's send time."),
    spread_s: float = typer.Option(2.0, help="Callers start within this many seconds."),
    apis: str = typer.Option("ws,riva", help="APIs the callers use, in turn."),
    decoder: str = typer.Option("auto", help="asr_streaming's DECODER: auto (the model's LM if any), greedy or lm. "
                                             "NeMo and sherpa-onnx are compared with greedy decoding only."),
    rounds: int = typer.Option(3, help="Interleaved rounds of the comparisons (ratios: their median and range)."),
    sherpa: bool = typer.Option(True, help="Compare with sherpa-onnx's engine (CTC models; exports the .nemo)."),
    capacity_search: bool = typer.Option(True, help="Search the capacity (off: the fixed levels and comparisons)."),
):
    """Capacity, latency percentiles and side-by-side throughput ratios through a real Triton + gateway."""
    from brogue.bench.report import ratio_text
    from brogue.bench.run import run_bench

    repo = model_repository
    nemo = nemo or (repo / f"{model}.nemo")
    result = run_bench(repo, clips or _clips_default(), out, model=model, level_seconds=level_seconds,
                       target_ms=target_ms, limit=limit, fixed=tuple(int(x) for x in levels.split(",") if x),
                       compare_streams=compare_streams, nemo=nemo if nemo.is_file() else None,
                       jitter_ms=jitter_ms, spread_s=spread_s, apis=tuple(apis.split(",")), decoder=decoder,
                       rounds=rounds, sherpa=sherpa and nemo.is_file(), capacity_search=capacity_search,
                       log=lambda m: console.print(m, highlight=False))
    typer.echo((out / "bench.md").read_text())
    for k, v in result["ratios"].items():
        typer.echo(f"ratio {k}={ratio_text(v)}")
    if result["capacity"] is not None:
        typer.echo(f"capacity streams={result['capacity']} per_core={result['capacity_per_core']}")


def _fault_stack(model_repository: Path, model: str, workdir: Path, owned_triton: bool = False, decoder: str = "auto"):
    from brogue.bench.stack import Stack

    return Stack(model_repository, workdir, model=model, owned_triton=owned_triton, decoder=decoder)


@app.command()
def faults(
    only: list[str] = typer.Option([], help="Scenario(s) to run (default: all but the long one): triton_restart, "
                                            "gateway_restart, gateway_crash, adapter_publish, slow_client; and "
                                            "supervised_triton (brogue serve's own Triton killed every --every s "
                                            "for --minutes)."),
    model_repository: Path = typer.Option(DEFAULT_MODEL_REPO),
    model: str = typer.Option("demo"),
    clips: Path = typer.Option(None, help="NeMo manifest of the clips (default: the test clips)."),
    streams: int = typer.Option(8, help="Callers under load during each fault."),
    out: Path = typer.Option(Path("bench-results") / "faults.json"),
    minutes: float = typer.Option(30.0, help="supervised_triton: how long."),
    every: float = typer.Option(300.0, help="supervised_triton: seconds between kills."),
):
    """Fault scripts under load: Triton killed, gateway restarted, adapters published, a slow client."""
    import json
    import tempfile

    from brogue.bench.faults import LONG_SCENARIOS, SCENARIOS
    from brogue.bench.run import load_clips

    names = only or list(SCENARIOS)
    unknown = set(names) - set(SCENARIOS) - set(LONG_SCENARIOS)
    if unknown:
        _fail(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    clip_list = load_clips(clips or _clips_default())
    results = []
    for name in names:
        with tempfile.TemporaryDirectory(prefix="brogue-faults-") as tmp:
            with _fault_stack(model_repository, model, Path(tmp), owned_triton=name in LONG_SCENARIOS) as stack:
                console.print(f"{name}: running", highlight=False)
                kw = {} if name == "slow_client" else {"n": streams}
                if name in LONG_SCENARIOS:
                    kw.update(minutes=minutes, every_s=every)
                r = {**SCENARIOS, **LONG_SCENARIOS}[name](stack, clip_list, **kw)
                results.append(r)
                console.print(f"{name}: {'ok' if r['ok'] else 'FAILED'} {json.dumps(r)}", highlight=False)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")
    for r in results:
        typer.echo(f"{r['scenario']}: {'ok' if r['ok'] else 'FAILED'} streams={r['streams']} errors={r['errors']}")
    if not all(r["ok"] for r in results):
        raise typer.Exit(1)


@app.command()
def soak(
    minutes: float = typer.Option(30.0),
    streams: int = typer.Option(..., help="Concurrent callers (e.g. 70% of `brogue bench`'s capacity)."),
    model_repository: Path = typer.Option(DEFAULT_MODEL_REPO),
    model: str = typer.Option("demo"),
    clips: Path = typer.Option(None, help="NeMo manifest of the clips (default: the test clips)."),
    out: Path = typer.Option(Path("bench-results") / "soak.json"),
    decoder: str = typer.Option("auto", help="asr_streaming's DECODER: auto (the model's LM if any), greedy or lm."),
):
    """A long fixed load: errors, RSS, live streams and Triton sequences sampled throughout."""
    import json
    import tempfile

    from brogue.bench.soak import soak as run_soak
    from brogue.bench.run import load_clips

    clip_list = load_clips(clips or _clips_default())
    with tempfile.TemporaryDirectory(prefix="brogue-soak-") as tmp:
        with _fault_stack(model_repository, model, Path(tmp), decoder=decoder) as stack:
            r = run_soak(stack, clip_list, streams, minutes, log=lambda m: console.print(m, highlight=False))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(r, indent=1) + "\n")
    typer.echo(f"soak: {'ok' if r['ok'] else 'FAILED'} minutes={minutes:g} callers={streams} streams={r['streams']} "
               f"errors={r['errors']} rss_after_1_min={r['rss_after_1_min']} rss_end={r['rss_end']} "
               f"rss_slope_mb_per_hour={r['rss_slope_mb_per_hour']} live_range={r['live_range']} "
               f"after_load={r['after_load']}")
    if not r["ok"]:
        raise typer.Exit(1)
