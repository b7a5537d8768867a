"""CPU per audio second and WER: Brogue's in-process engine against sherpa-onnx, side by side.

Both engines run the same model at the same latency (Brogue's ``model.json`` default, 240 ms
chunks on the demo model; sherpa-onnx on :func:`brogue.export.sherpa_onnx.export_for_sherpa`'s
export of the same ``.nemo``), greedy CTC, on the same clips, fed as live audio would be:

- ``streams`` slots, each playing its share of the clips (``clips[i::streams]``) back to back,
  one stream per clip; every round gives each slot's current stream one packet of one chunk of
  audio (``shift_size[1] * hop`` samples, 240 ms), the last packet of a clip closing its stream;
- Brogue: one :meth:`StreamingRunner.step` per round over all the slots' packets (it batches every
  stream with a ready chunk); sherpa-onnx: ``accept_waveform`` per stream, then ``decode_streams``
  over the ``is_ready`` streams until none is, and ``get_result`` for each decoded stream (the
  partial a live server would send). sherpa-onnx drops a short last window, so a closing stream gets
  the fewest zero samples that make it decode its last frame
  (:func:`~brogue.export.sherpa_onnx.tail_padding`) before ``input_finished``;
- the same number of ONNX Runtime intra-op threads (``threads``: Brogue's ``threads``, sherpa's
  ``num_threads``). Brogue's sessions never spin (``allow_spinning`` 0); sherpa's keep ORT's default,
  so with ``threads`` > 1 its worker threads spin between runs and its CPU exceeds its wall time.

CPU is ``time.process_time()`` (all threads of the process) around the round loop only: model
loading and a warm-up are outside it. Each measurement runs in its own spawned subprocess (no thread
pool or allocator of one engine lives beside the other), with ``OPENBLAS_NUM_THREADS=1`` as Brogue's
servers set it. ``repeats`` rounds interleave the engines (alternating which goes first); the report
gives the median and range over the rounds, and ``ratio brogue/sherpa_onnx@N`` = sherpa's CPU per
audio second / Brogue's, paired within each round (above 1: Brogue is cheaper). WER is jiwer's over
the normalised texts (:func:`brogue.clients.eval.normalise`).

CLI: ``python -m bench.sherpa --clips MANIFEST --streams 1,32 --threads 1 --repeats 3 --json OUT.json``
writes OUT.json and OUT.md and prints the table and one ``ratio brogue/sherpa_onnx@N=<median>`` line
per stream count. :func:`sherpa_cpu_per_audio_s` gives sherpa's figure alone, for other comparisons.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before numpy: inherited by the spawned workers

import argparse
import json
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
BROGUE_DIR = REPO / "model_repo" / "exported" / "demo"
NEMO = REPO / "model_repo" / "demo.nemo"
ENGINES = ("brogue", "sherpa_onnx")
SAMPLE_RATE = 16000


# ---------------------------------------------------------------------------------------------
# One engine, one measurement (in whichever process calls it)


class _Brogue:
    def __init__(self, model_dir, threads: int, weights: str = "auto"):
        from brogue.engine.runner import StreamingRunner

        self.runner = StreamingRunner(model_dir, threads=threads, decoder="greedy", weights=weights)
        self.states = {}

    def open(self, slot):
        self.states[slot] = self.runner.open(slot)

    def round(self, packets: dict) -> dict:
        """Feed ``{slot: (samples, end)}``, decode; return ``{slot: final text}`` for closed streams."""
        self.runner.step([(self.states[k], x, end) for k, (x, end) in packets.items()])
        done = {}
        for k in packets:
            st = self.states[k]
            if st.finished:
                done[k] = self.runner.detok.decode(st.tokens)
                del self.states[k]
            elif packets[k][1]:
                raise RuntimeError(f"stream {k} not finished after its last packet")
        return done


class _Sherpa:
    def __init__(self, model_dir, threads: int, weights=None):
        from brogue.export.sherpa_onnx import recognizer, window_of

        self.rec = recognizer(model_dir, threads)
        self.window = window_of(model_dir)
        self.streams = {}
        self.lengths = {}

    def open(self, slot):
        self.streams[slot] = self.rec.create_stream()
        self.lengths[slot] = 0

    def round(self, packets: dict) -> dict:
        from brogue.export.sherpa_onnx import tail_padding

        rec = self.rec
        for k, (x, end) in packets.items():
            s = self.streams[k]
            s.accept_waveform(SAMPLE_RATE, x)
            self.lengths[k] += len(x)
            if end:
                pad = tail_padding(self.lengths[k], *self.window)
                s.accept_waveform(SAMPLE_RATE, np.zeros(pad, np.float32))
                s.input_finished()
        live = [self.streams[k] for k in packets]
        while ready := [s for s in live if rec.is_ready(s)]:
            rec.decode_streams(ready)
            for s in ready:
                rec.get_result(s)  # the partial a live server sends
        done = {}
        for k, (_, end) in packets.items():
            if end:  # input finished and nothing left ready: final
                done[k] = rec.get_result(self.streams.pop(k))
        return done


def _play(engine, clips, streams: int, packet: int) -> dict[str, str]:
    """The round loop: ``streams`` slots play their clips back to back, one packet per round."""
    queues = [list(clips[i::streams]) for i in range(streams)]
    current: dict[int, tuple] = {}  # slot -> (name, audio, position)
    hyps = {}
    while True:
        for k, q in enumerate(queues):
            if k not in current and q:
                name, audio = q.pop(0)
                current[k] = (name, audio, 0)
                engine.open(k)
        if not current:
            return hyps
        packets = {}
        for k, (name, audio, pos) in current.items():
            packets[k] = (audio[pos:pos + packet], pos + packet >= len(audio))
            current[k] = (name, audio, pos + packet)
        for k, text in engine.round(packets).items():
            hyps[current.pop(k)[0]] = " ".join(text.split())


def measure(engine: str, model_dir, clips, streams: int, threads: int = 1, packet: int = 3840,
            weights: str = "auto") -> dict:
    """One measurement of ``engine`` ("brogue" on a Brogue export, "sherpa_onnx" on a sherpa
    export in ``model_dir``) over ``clips`` (``(name, float32 audio)`` pairs, 16 kHz): CPU and wall
    seconds of the round loop, audio seconds, and the final transcript of each clip. ``weights``:
    Brogue's weights mode ("auto", as served; "shared"; or "private": ORT prepacks each session's copy)."""
    eng = (_Brogue if engine == "brogue" else _Sherpa)(model_dir, threads, weights)
    warm = [(f"warm{i}", clips[0][1][: SAMPLE_RATE]) for i in range(streams)]
    _play(eng, warm, streams, packet)  # first-run allocations, batch shapes at this size
    c0, w0 = time.process_time(), time.perf_counter()
    hyps = _play(eng, clips, streams, packet)
    cpu, wall = time.process_time() - c0, time.perf_counter() - w0
    audio = sum(len(a) for _, a in clips) / SAMPLE_RATE
    return {"engine": engine, "streams": streams, "threads": threads, "audio_s": audio, "cpu_s": cpu,
            "wall_s": wall, "cpu_per_audio_s": cpu / audio, "audio_s_per_cpu_s": audio / cpu, "hyps": hyps}


def measure_isolated(engine: str, model_dir, clips, streams: int, threads: int = 1, packet: int = 3840,
                     weights: str = "auto") -> dict:
    """:func:`measure` in a freshly spawned process."""
    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
        return pool.submit(measure, engine, str(model_dir), clips, streams, threads, packet, weights).result()


# ---------------------------------------------------------------------------------------------
# Setup shared by the CLI, the test and other comparisons


def as_audio(clips) -> list[tuple[str, np.ndarray]]:
    """:class:`bench.load.Clip` objects (PCM16) as ``(name, float32 audio)`` pairs."""
    return [(c.name, np.frombuffer(c.pcm16, "<i2").astype(np.float32) / 32768) for c in clips]


def brogue_latency(brogue_dir) -> tuple[str, int]:
    """The Brogue export's default latency name and its packet (one steady chunk) in samples."""
    from brogue.engine.metadata import ModelMeta

    meta = ModelMeta.load(brogue_dir)
    lat = meta.latency(None)
    return lat.name, lat.shift_size[1] * meta.mel.hop_length


def prepare_sherpa(nemo, latency: str, out_dir=None) -> Path:
    """A sherpa-onnx export of ``nemo`` at ``latency`` in ``out_dir`` (reused when it already holds
    one for that latency), or in a new temporary folder."""
    from brogue.export.sherpa_onnx import export_for_sherpa, export_props

    out = Path(out_dir) if out_dir else Path(tempfile.mkdtemp(prefix="sherpa-onnx-"))
    if not ((out / "model.onnx").exists() and (out / "tokens.txt").exists()
            and export_props(out).get("brogue_latency") == latency):
        export_for_sherpa(nemo, out, latency)
    return out


def wer(clips, hyps: dict[str, str]) -> float:
    """WER in percent of ``hyps`` (by clip name) against the clips' texts."""
    import jiwer

    from brogue.clients.eval import normalise

    refs = [normalise(c.text) for c in clips]
    return 100 * jiwer.wer(refs, [normalise(hyps.get(c.name, "")) or "<empty>" for c in clips])


def sherpa_cpu_per_audio_s(clips, streams: int, *, threads: int = 1, repeats: int = 3, sherpa_dir=None,
                           nemo=NEMO, brogue_dir=BROGUE_DIR) -> float:
    """sherpa-onnx's CPU seconds per audio second (median of ``repeats`` isolated runs) with
    ``streams`` concurrent streams, fed as :func:`measure` feeds them, at the latency and packet of
    the Brogue export in ``brogue_dir``. ``clips``: :class:`bench.load.Clip` objects."""
    latency, packet = brogue_latency(brogue_dir)
    d = prepare_sherpa(nemo, latency, sherpa_dir)
    audio = as_audio(clips)
    return statistics.median(
        measure_isolated("sherpa_onnx", d, audio, streams, threads, packet)["cpu_per_audio_s"]
        for _ in range(repeats))


def side_by_side(clips, streams=(1, 32), *, threads: int = 1, repeats: int = 3, brogue_dir=BROGUE_DIR,
                 nemo=NEMO, sherpa_dir=None, isolate: bool = True, weights: str = "auto",
                 log=print) -> dict:
    """Both engines on ``clips`` (:class:`bench.load.Clip`) at each stream count, ``repeats``
    interleaved rounds; the summary (see :func:`summarise`). ``isolate``: each measurement in its
    own subprocess (False: in this process, for quick checks). ``weights``: Brogue's weights mode."""
    latency, packet = brogue_latency(brogue_dir)
    dirs = {"brogue": Path(brogue_dir), "sherpa_onnx": prepare_sherpa(nemo, latency, sherpa_dir)}
    audio = as_audio(clips)
    run = measure_isolated if isolate else measure
    runs = []
    for rep in range(repeats):
        for n in streams:
            order = ENGINES if rep % 2 == 0 else ENGINES[::-1]
            for engine in order:
                r = run(engine, dirs[engine], audio, n, threads, packet, weights)
                r["round"] = rep
                runs.append(r)
                log(f"  round {rep + 1} {engine:11s} N={n:3d}: {r['audio_s_per_cpu_s']:7.2f} audio s / "
                    f"CPU s, CPU/wall {r['cpu_s'] / r['wall_s']:.2f}")
    from brogue.export.sherpa_onnx import FEATURES

    notes = [FEATURES,
             "sherpa-onnx keeps ONNX Runtime's spinning on: with threads > 1 its CPU / wall exceeds 1",
             "sherpa-onnx runs the steady graph from frame 0 (no first-chunk graph) and decodes its first "
             "window once window_size + 1 frames exist"]
    return summarise(runs, clips, latency=latency, packet_ms=1000 * packet // SAMPLE_RATE, threads=threads,
                     brogue_weights=weights, notes=notes)


def _spread(xs: list[float], nd: int = 3) -> dict:
    return {"median": round(statistics.median(xs), nd), "min": round(min(xs), nd), "max": round(max(xs), nd),
            "rounds": [round(x, nd) for x in xs]}


def summarise(runs: list[dict], clips, **setup) -> dict:
    """Per stream count and engine: audio s per CPU s, CPU ms per audio s, CPU/wall (median and range
    over the rounds), WER (and whether every round gave the same transcripts); the paired ratios."""
    out = {"setup": {**setup, "clips": len(clips), "audio_s": round(runs[0]["audio_s"], 1) if runs else 0},
           "results": {}, "ratios": {}}
    for n in sorted({r["streams"] for r in runs}):
        row = {}
        for engine in ENGINES:
            rs = [r for r in runs if r["streams"] == n and r["engine"] == engine]
            row[engine] = {
                "audio_s_per_cpu_s": _spread([r["audio_s_per_cpu_s"] for r in rs], 2),
                "cpu_ms_per_audio_s": _spread([1000 * r["cpu_per_audio_s"] for r in rs], 1),
                "cpu_over_wall": _spread([r["cpu_s"] / r["wall_s"] for r in rs], 2),
                "wer": round(wer(clips, rs[0]["hyps"]), 2),
                "same_transcripts_every_round": all(r["hyps"] == rs[0]["hyps"] for r in rs),
            }
        pairs = {}
        for r in runs:
            if r["streams"] == n:
                pairs.setdefault(r["round"], {})[r["engine"]] = r["cpu_per_audio_s"]
        paired = [p["sherpa_onnx"] / p["brogue"] for p in pairs.values() if len(p) == 2]
        out["ratios"][str(n)] = _spread(paired)
        out["results"][str(n)] = row
    return out


def markdown(summary: dict) -> str:
    """The summary as a markdown table (median [min-max] over the rounds)."""
    s = summary["setup"]

    def mr(d, fmt):
        return f"{d['median']:{fmt}} [{d['min']:{fmt}}-{d['max']:{fmt}}]"

    lines = [f"Brogue in-process (greedy) vs sherpa-onnx, {s['clips']} clips ({s['audio_s']} s of audio), "
             f"latency "
             f"{s['latency']}, {s['packet_ms']} ms packets, {s['threads']} ORT thread(s), Brogue weights "
             f"{s['brogue_weights']}; median [min-max] of "
             f"{len(next(iter(summary['ratios'].values()), {}).get('rounds', []))} interleaved rounds.", "",
             "| streams | engine | audio s / CPU s | CPU ms / audio s | CPU / wall | WER % |",
             "|---:|---|---:|---:|---:|---:|"]
    for n, row in summary["results"].items():
        for engine, r in row.items():
            lines.append(f"| {n} | {engine} | {mr(r['audio_s_per_cpu_s'], '.2f')} "
                         f"| {mr(r['cpu_ms_per_audio_s'], '.1f')} | {mr(r['cpu_over_wall'], '.2f')} "
                         f"| {r['wer']:.2f} |")
    lines += ["", "| streams | ratio brogue/sherpa_onnx (sherpa CPU / Brogue CPU per audio s) |",
              "|---:|---:|"]
    lines += [f"| {n} | {mr(r, '.3f')} |" for n, r in summary["ratios"].items()]
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    from .run import load_clips

    p = argparse.ArgumentParser(
        description="Brogue's in-process engine vs sherpa-onnx: CPU per audio second, WER")
    p.add_argument("--clips", required=True, help="NeMo manifest (paths relative to its folder)")
    p.add_argument("--streams", default="1,32", help="comma-separated concurrent stream counts")
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads, both engines")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--limit", type=int, default=None, help="use the manifest's first LIMIT clips")
    p.add_argument("--model-dir", default=str(BROGUE_DIR), help="Brogue export (model.json)")
    p.add_argument("--nemo", default=str(NEMO), help="the .nemo it was exported from")
    p.add_argument("--sherpa-dir", default=None, help="where to keep (and reuse) the sherpa-onnx export")
    p.add_argument("--brogue-weights", default="auto", choices=["auto", "shared", "private"],
                   help="Brogue's weights mode (auto: as served; shared: MLAS prepacking off)")
    p.add_argument("--json", default="sherpa-side.json",
                   help="output JSON; the markdown goes beside it (.md)")
    a = p.parse_args(argv)

    clips = load_clips(Path(a.clips), a.limit)
    streams = [int(x) for x in a.streams.split(",") if x]
    summary = side_by_side(clips, streams, threads=a.threads, repeats=a.repeats, brogue_dir=a.model_dir,
                           nemo=a.nemo, sherpa_dir=a.sherpa_dir, weights=a.brogue_weights)
    args = argv if argv is not None else sys.argv[1:]
    summary["setup"]["command"] = "python -m bench.sherpa " + " ".join(args)
    out = Path(a.json)
    out.write_text(json.dumps(summary, indent=1) + "\n")
    md = markdown(summary)
    out.with_suffix(".md").write_text(md)
    print(md)
    for n, r in summary["ratios"].items():
        print(f"ratio brogue/sherpa_onnx@{n}={r['median']}")
    print(f"wrote {out} and {out.with_suffix('.md')}")
    return summary


if __name__ == "__main__":
    main()
