"""Cut the few short clips that tests/test_demo_model.py checks the committed artifacts with.

    python recipes/test_clips.py --data /work/data

For each adapter, one short clip of its held-out split (recipes/corpus_heldout.py) on which the adapter lowers the
character error rate the most; for the base model, the short base held-out clip it transcribes best.
These clips are *chosen* to show a difference: they are regression checks of the committed files,
not accuracy measurements (the table in docs/accuracy.md is). Stored as 16 kHz FLAC in tests/data/demo (~0.2 MB).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ADAPTED = ["scottish", "caribbean", "indian", "german", "medical"]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("/work/data"))
    ap.add_argument("--model-dir", type=Path, default=REPO / "model_repo" / "exported" / "demo")
    ap.add_argument("--store", type=Path, default=REPO / "model_repo" / "adapters")
    ap.add_argument("--out", type=Path, default=REPO / "tests" / "data" / "demo")
    ap.add_argument("--max-seconds", type=float, default=2.8)
    ap.add_argument("--split", default="heldout", help="which split of each set: heldout (default) or test")
    a = ap.parse_args(argv)

    import soundfile as sf

    from brogue.clients.eval import error_rates, load_audio, make_runner, read_manifest, transcribe

    a.out.mkdir(parents=True, exist_ok=True)
    picked = []
    for s in ["base", *ADAPTED]:
        rows = read_manifest(a.data / f"{s}_{a.split}.json")
        short = [r for r in rows if r["duration"] <= a.max_seconds]
        rows = short or sorted(rows, key=lambda r: r["duration"])[:10]  # medical sentences run long
        runner, _ = make_runner(a.model_dir, None if s == "base" else f"{s}@v1", a.store)
        audios = [load_audio(r["audio_filepath"], 16000) for r in rows]
        base = transcribe(runner, audios, 0)
        scored = []
        for i, r in enumerate(rows):
            cb = error_rates([r["text"]], [base[i]])[1]
            scored.append((cb, i))
        if s == "base":
            cb, i = min(scored)
            gain = -cb
        else:
            adapted = transcribe(runner, audios, 1)
            best = max(((cb - error_rates([rows[i]["text"]], [adapted[i]])[1], cb, i) for cb, i in scored))
            gain, cb, i = best
        r = rows[i]
        name = f"{s}.flac"
        sf.write(a.out / name, audios[i], 16000, format="FLAC", subtype="PCM_16")
        picked.append({"audio_filepath": name, "duration": r["duration"], "text": r["text"], "set": s,
                       "voice": r.get("voice", ""), "family": r.get("family", "")})
        print(f"{s}: {r['text']!r} base CER {cb:.3f} gain {gain:.3f}")
    with open(a.out / "manifest.json", "w") as f:
        for p in picked:
            f.write(json.dumps(p) + "\n")


if __name__ == "__main__":
    main()
