"""The bench's outputs: a JSON result, a markdown report and two PNG plots (matplotlib, Agg)."""

from __future__ import annotations

import json
from pathlib import Path


def _ms(v) -> str:
    return "–" if v is None else f"{v:.0f}"


def _proc(level: dict, name: str) -> str:
    p = level["processes"].get(name)
    return "–" if not p else f"{p['cpu_cores_mean']:.2f} / {p['rss_mb_max']:.0f}"


def _range(r) -> str:
    return f"({r[0]}–{r[1]})" if r and r[0] != r[1] else ""


def ratio_text(v) -> str:
    """A ratio as ``median (min–max)``; older results held a single number."""
    return f"{v['median']} ({v['min']}–{v['max']})" if isinstance(v, dict) else str(v)


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = [f"Model `{result['model']}` ({result['model_desc']}), {result.get('decoder', '')} decoding, chunk "
             f"{result['chunk_ms']} ms; {m['cpus']} CPUs ({m['cpu_model']}), {m['memory_gb']} GiB; {result['date']}.",
             f"Command: `{result['command']}`", ""]
    if result["capacity"] is not None:
        lines += [f"**Capacity: {result['capacity']} concurrent real-time streams, {result['capacity_per_core']} per "
                  f"core** (p95 end of speech to final ≤ {result['target_ms']:.0f} ms, no errors; "
                  f"{result['level_seconds']:g} s per level, callers alternating WebSocket and Riva gRPC over "
                  f"{len(result['tenants'])} tenants).", ""]
    lines += [
             "| streams | streams run | errors | first partial p50/p95 ms | final p50/p95/p99 ms | "
             "chunk p50/p95/p99 ms | audio s/s | server CPU s per audio s | gateway cores / MB | "
             "Triton cores / MB | WER % |",
             "|---:|---:|---:|---|---|---|---:|---:|---|---|---:|"] if result["levels"] else []
    for lv in result["levels"]:
        fp, fl, ch = lv["first_partial"], lv["final_latency"], lv["chunk_latency"]
        lines.append(
            f"| {lv['streams']} | {lv['streams_run']} | {lv['errors']} | {_ms(fp['p50_ms'])} / {_ms(fp['p95_ms'])} | "
            f"{_ms(fl['p50_ms'])} / {_ms(fl['p95_ms'])} / {_ms(fl['p99_ms'])} | "
            f"{_ms(ch['p50_ms'])} / {_ms(ch['p95_ms'])} / {_ms(ch['p99_ms'])} | {lv['audio_s_per_s']} | "
            f"{lv['rtf_cpu']} | {_proc(lv, 'gateway')} | {_proc(lv, 'triton')} | {lv['wer']} |")
    if result.get("comparisons"):
        lines += ["", f"Throughput, {result['compare_streams']} streams at a time, unpaced, same "
                  f"{result['compare_clips']} clips; the median of {result.get('rounds', 1)} interleaved rounds "
                  "(range); the peers ran once, after the servers stopped:", "",
                  "| path | audio s per s | server CPU s per audio s | WER % | completed |", "|---|---:|---:|---:|---:|"]
        for c in result["comparisons"].values():
            lines.append(f"| {c['path']} | {c['audio_s_per_s']} {_range(c.get('audio_s_per_s_range'))} | "
                         f"{c.get('cpu_per_audio_s')} {_range(c.get('cpu_per_audio_s_range'))} | {c['wer']} | "
                         f"{c['completed']}/{c['of']} |")
        lines += [""] + [f"- `ratio {k}={ratio_text(v)}`" for k, v in result["ratios"].items()]
    return "\n".join(lines) + "\n"


def plots(result: dict, out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = result["levels"]
    if not levels:
        return []
    n = [lv["streams"] for lv in levels]
    files = []
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for q, style in (("p50_ms", "o-"), ("p95_ms", "s-"), ("p99_ms", "^-")):
        ax.plot(n, [lv["final_latency"][q] for lv in levels], style, label=f"end of speech → final {q[:3]}")
    ax.plot(n, [lv["first_partial"]["p95_ms"] for lv in levels], "x--", label="first partial p95")
    ax.plot(n, [lv["chunk_latency"]["p95_ms"] for lv in levels], "d:", label="chunk round trip p95")
    ax.axhline(result["target_ms"], color="grey", lw=1, ls="--", label=f"target {result['target_ms']:.0f} ms")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("concurrent real-time streams")
    ax.set_ylabel("ms")
    ax.set_title(f"Latency against streams ({result['machine']['cpus']} CPUs)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    files.append(out_dir / "latency.png")
    fig.savefig(files[-1], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.plot(n, [lv["audio_s_per_s"] for lv in levels], "o-", label="audio seconds per second (served)")
    ax.plot(n, n, ":", color="grey", label="offered (real time)")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log", base=2)
    ax.set_xlabel("concurrent real-time streams")
    ax.set_ylabel("audio s / s")
    ax.set_title("Throughput against streams")
    ax.legend(fontsize=8)
    fig.tight_layout()
    files.append(out_dir / "throughput.png")
    fig.savefig(files[-1], dpi=110)
    plt.close(fig)
    return files


def write(result: dict, out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "bench.json").write_text(json.dumps(result, indent=1) + "\n")
    (out_dir / "bench.md").write_text(markdown(result))
    return [out_dir / "bench.json", out_dir / "bench.md", *plots(result, out_dir)]
