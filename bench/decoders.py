"""Benchmark: LM beam search against greedy CTC decoding, side by side on the same streams.

Not a test: it prints numbers measured in one run (compare ratios; these hosts are shared). The
same utterances are streamed through two :class:`StreamingRunner`\\ s on one exported model, one
decoding greedily and one with the model's LM (``model.json`` ``decoding.ctc_lm``), in batches of
``--batch`` streams, alternating which decoder goes first. It reports

- wall time and real-time factor of each, and their ratio (the cost of the beam search);
- the time from a token's encoder frame to the chunk that commits it (median, p90), for each;
- WER of each on the manifest.

    .venv/bin/python bench/decoders.py --manifest DATA/base_test.json [--model-dir model_repo/exported/demo]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent


def run(runner, audios, batch: int):
    """Stream ``audios`` in batches; return (hyps, seconds, commit delays in seconds)."""
    fs = runner.meta.frame_seconds
    hyps, delays = [], []
    t0 = time.perf_counter()
    for i in range(0, len(audios), batch):
        part = audios[i:i + batch]
        frames_before: dict = {}

        def on_step(res, frames_before=frames_before):
            for sid, o in res.items():
                if o.finished:
                    continue  # the last chunk commits everything: not a steady-state delay
                done = (frames_before.get(sid, 0) + len(o.blank_probs)) * fs
                delays.extend(done - t for t in o.times)
                frames_before[sid] = frames_before.get(sid, 0) + len(o.blank_probs)

        states = runner.transcribe(part, on_step=on_step)
        hyps += [runner.detok.decode(s.tokens) for s in states]
    return hyps, time.perf_counter() - t0, delays


def load_streams(manifest: Path, rate: int, limit: int | None = None):
    """The manifest's audio at ``rate`` and its texts: (audios, total audio seconds, texts)."""
    from brogue.clients.eval import load_audio, read_manifest

    rows = read_manifest(manifest, limit)
    audios = [load_audio(r["audio_filepath"], rate) for r in rows]
    return audios, sum(len(x) for x in audios) / rate, [r["text"] for r in rows]


def main(argv=None) -> dict:
    from brogue.clients.eval import error_rates
    from brogue.engine.runner import StreamingRunner

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--manifest", type=Path, required=True)
    ap.add_argument("--model-dir", type=Path, default=REPO / "model_repo" / "exported" / "demo")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--limit", type=int, default=None)
    a = ap.parse_args(argv)

    runners = {"greedy": StreamingRunner(a.model_dir, decoder="greedy"),
               "lm": StreamingRunner(a.model_dir, decoder="lm")}
    audios, audio_s, texts = load_streams(a.manifest, runners["greedy"].meta.mel.sample_rate, a.limit)
    run(runners["lm"], audios[:2], a.batch)  # warm-up: LM caches, ORT sessions
    run(runners["greedy"], audios[:2], a.batch)
    seconds = {k: [] for k in runners}
    out = {}
    for r in range(a.rounds):
        order = list(runners) if r % 2 == 0 else list(runners)[::-1]
        for name in order:
            hyps, s, delays = run(runners[name], audios, a.batch)
            seconds[name].append(s)
            wer, cer = error_rates(texts, hyps)
            out[name] = {"wer": wer, "cer": cer, "commit_delay_median_s": float(np.median(delays)),
                         "commit_delay_p90_s": float(np.percentile(delays, 90))}
    for name in runners:
        best = min(seconds[name])
        out[name] |= {"seconds": best, "realtime_factor": best / audio_s}
        print(f"{name:6s}: {best:6.1f} s for {audio_s / 60:.1f} min of audio (RTF {best / audio_s:.4f}), "
              f"WER {out[name]['wer'] * 100:.2f}%, commit delay median {out[name]['commit_delay_median_s']:.2f} s "
              f"p90 {out[name]['commit_delay_p90_s']:.2f} s")
    ratio = out["lm"]["seconds"] / out["greedy"]["seconds"]
    out["lm_over_greedy_time"] = ratio
    print(f"LM beam search / greedy wall time: {ratio:.2f}x (best of {a.rounds} rounds each, {a.batch} streams per batch)")
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
