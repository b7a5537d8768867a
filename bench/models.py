"""Benchmark: two exported models side by side on the same streams (say, before and after a retrain).

Not a test: it prints numbers measured in one run (compare ratios; these hosts are shared). The
same utterances are streamed through a :class:`StreamingRunner` on each model directory, with the
decoder given (``greedy`` or ``lm``), in batches of ``--batch`` streams, alternating which model goes
first in each round. It reports, for each model, its best wall time, real-time factor and WER, and
the ratio of the second model's time to the first's.

    .venv/bin/python -m bench.models --manifest DATA/base_test.json OLD_MODEL_DIR NEW_MODEL_DIR [--decoder lm]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .decoders import load_streams, run


def main(argv=None) -> dict:
    from brogue.clients.eval import error_rates
    from brogue.engine.runner import StreamingRunner

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model_dirs", type=Path, nargs=2, metavar="MODEL_DIR")
    ap.add_argument("--manifest", type=Path, required=True)
    ap.add_argument("--decoder", choices=("greedy", "lm"), default="greedy")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--limit", type=int, default=None)
    a = ap.parse_args(argv)

    runners = [StreamingRunner(d, decoder=a.decoder) for d in a.model_dirs]
    rate = runners[0].meta.mel.sample_rate
    if runners[1].meta.mel.sample_rate != rate:
        raise SystemExit("the two models take different sample rates: not the same streams")
    audios, audio_s, texts = load_streams(a.manifest, rate, a.limit)
    for runner in runners:
        run(runner, audios[:2], a.batch)  # warm-up: ORT sessions, LM caches
    seconds: list[list[float]] = [[], []]
    wers = [0.0, 0.0]
    for r in range(a.rounds):
        for i in ((0, 1) if r % 2 == 0 else (1, 0)):
            hyps, s, _ = run(runners[i], audios, a.batch)
            seconds[i].append(s)
            wers[i] = error_rates(texts, hyps)[0]
    out = {"decoder": a.decoder, "audio_seconds": audio_s, "models": []}
    for d, runner, secs, wer in zip(a.model_dirs, runners, seconds, wers):
        best = min(secs)
        out["models"].append({"model_dir": str(d), "seconds": best, "all_seconds": secs,
                              "realtime_factor": best / audio_s, "wer": wer,
                              "n_layers": runner.meta.n_layers, "d_model": runner.meta.d_model})
        print(f"{d} ({runner.meta.n_layers}x{runner.meta.d_model}): {best:6.1f} s for {audio_s / 60:.1f} min "
              f"of audio (RTF {best / audio_s:.4f}), WER {wer * 100:.2f}% ({a.decoder}); "
              f"rounds {', '.join(f'{x:.1f}' for x in secs)} s")
    ratio = out["models"][1]["seconds"] / out["models"][0]["seconds"]
    out["second_over_first_time"] = ratio
    print(f"second / first wall time: {ratio:.2f}x (best of {a.rounds} alternating rounds each, "
          f"{a.batch} streams per batch)")
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
