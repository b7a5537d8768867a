"""Word boosting, measured: phrase recall with and without boosting on clips where the model misses
the phrase, and false alarms (boosted phrases that the audio lacks but the transcript gains).

    python -m brogue.bench.boosting --out docs/performance/boosting.json [--harm MANIFEST]

Clips: sentences with a drug name, read by espeak-ng voices (the demo model was never trained on
these names). Each clip is decoded (in process, the served engine) with no boosting; with its own
drug name boosted; and with a list of the other drug names boosted (none of which it says), at each
boost level and decoder. Recall counts clips whose transcript has the drug name as a word; false
alarms count clips whose transcript gains any of the absent names.

CPU: the clips decoded as one batch, with no boosting and with every clip boosting all the drug
names, 3 interleaved rounds (``cpu`` in the output: the median ratio and its range).

``--harm MANIFEST`` (a NeMo manifest of speech without these phrases): word error rate with no
boosting, with all the drug names boosted, and with a list of names that are also common words
(``COMMON``), at the boosts in ``HARM_BOOSTS``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

from brogue.boosting import validate
from brogue.engine.runner import StreamingRunner

DRUGS = ["warfarin", "metformin", "heparin", "amoxicillin", "lisinopril", "atorvastatin", "omeprazole",
         "gabapentin", "prednisone", "levothyroxine", "amlodipine", "sertraline", "ibuprofen", "insulin",
         "clopidogrel", "furosemide"]
FRAMES = ["the patient takes {} every morning", "we stopped the {} yesterday", "please check the {} dose"]
VOICES = ["en-us", "en-us+m3", "en+f2"]
COMMON = ["will", "may", "mark", "bill", "grace", "april", "rob", "sandy", "sue", "pat", "art", "summer"]
HARM_BOOSTS = (8.0, 16.0)


def make_clips(workdir: Path) -> list[tuple[np.ndarray, str, str]]:
    clips = []
    for i, drug in enumerate(DRUGS):
        for j, voice in enumerate(VOICES[:2]):
            text = FRAMES[(i + j) % len(FRAMES)].format(drug)
            raw, wav = workdir / f"{i}-{j}.raw.wav", workdir / f"{i}-{j}.wav"
            subprocess.run(["espeak-ng", "-v", voice, "-s", "150", "-w", str(raw), text], check=True)
            subprocess.run(["sox", str(raw), "-r", "16000", "-c", "1", "-b", "16", str(wav)], check=True)
            audio, _ = sf.read(wav, dtype="float32")
            clips.append((audio, drug, text))
    return clips


def measure(model_dir: Path, clips, decoder: str, boosts=(0.0, 4.0, 8.0, 12.0, 16.0, 20.0)) -> list[dict]:
    runner = StreamingRunner(model_dir, decoder=decoder)
    rows = []

    def words(audio, phrases):
        (st,) = runner.transcribe([audio], boosts=[validate(phrases)])
        return runner.detok.decode(st.tokens).split()

    for boost in boosts:
        hits = alarms = 0
        for audio, drug, _ in clips:
            hits += drug in words(audio, [(drug, boost)] if boost else [])
            absent = [d for d in DRUGS if d != drug]
            got = words(audio, [(d, boost) for d in absent] if boost else [])
            alarms += any(d in got for d in absent)
        rows.append({"decoder": decoder, "boost": boost, "clips": len(clips), "recall": hits / len(clips),
                     "false_alarm_rate": alarms / len(clips)})
        print(json.dumps(rows[-1]))
    return rows


def cpu_cost(model_dir: Path, clips, decoder: str, rounds: int = 3, boost: float = 8.0) -> dict:
    """CPU seconds per audio second of the clips decoded together (one batch), with no boosting and
    with each clip boosting all the drug names; rounds interleaved, median and range."""
    import time

    runner = StreamingRunner(model_dir, decoder=decoder)
    audios = [a for a, _, _ in clips]
    seconds = sum(len(a) for a in audios) / 16000
    phrases = validate([(d, boost) for d in DRUGS])
    runner.transcribe(audios, boosts=[phrases] * len(audios))  # warm: graphs built, sessions run
    plain, boosted = [], []
    for _ in range(rounds):
        for out, b in ((plain, None), (boosted, [phrases] * len(audios))):
            t = time.process_time()
            runner.transcribe(audios, boosts=b)
            out.append((time.process_time() - t) / seconds)
    ratios = sorted(b / p for p, b in zip(plain, boosted))
    row = {"decoder": decoder, "boost": boost, "phrases": len(phrases), "streams": len(audios),
           "cpu_per_audio_s_plain": round(sorted(plain)[rounds // 2], 5),
           "cpu_per_audio_s_boosted": round(sorted(boosted)[rounds // 2], 5),
           "boosted_over_plain": round(ratios[rounds // 2], 3), "range": [round(ratios[0], 3), round(ratios[-1], 3)]}
    print(json.dumps(row))
    return row


def harm(model_dir: Path, manifest: Path, decoder: str, limit: int = 150) -> list[dict]:
    import jiwer

    rows = [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()][:limit]
    audios = [sf.read(manifest.parent / r["audio_filepath"], dtype="float32")[0] for r in rows]
    refs = [r["text"] for r in rows]
    runner = StreamingRunner(model_dir, decoder=decoder)
    out = []
    for name, phrases in (("none", []), ("drugs", DRUGS), ("common words", COMMON)):
        for boost in (HARM_BOOSTS if phrases else (0.0,)):
            p = validate([(x, boost) for x in phrases])
            hyps = [runner.detok.decode(runner.transcribe([a], boosts=[p])[0].tokens) for a in audios]
            out.append({"decoder": decoder, "list": name, "boost": boost, "clips": len(rows),
                        "wer": round(jiwer.wer(refs, hyps), 4)})
            print(json.dumps(out[-1]))
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model-dir", type=Path, default=Path(__file__).resolve().parent.parent / "model_repo" / "exported" / "demo")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--harm", type=Path, help="A manifest of speech without the phrases: WER with boost lists.")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        clips = make_clips(Path(tmp))
    rows = [r for dec in ("greedy", "lm") for r in measure(args.model_dir, clips, dec)]
    cpu = [cpu_cost(args.model_dir, clips, dec) for dec in ("greedy", "lm")]
    harm_rows = [r for dec in ("greedy", "lm") for r in harm(args.model_dir, args.harm, dec)] if args.harm else []
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"drugs": DRUGS, "frames": FRAMES, "voices": VOICES[:2], "common": COMMON,
                                        "rows": rows, "cpu": cpu, "harm": harm_rows}, indent=1))


if __name__ == "__main__":
    main()
