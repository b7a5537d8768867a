"""The demo model's greedy WER on neural voices (recipes/neural_tts.py) against espeak-ng en-us.

    .venv/bin/python recipes/neural_tts_eval.py --out /tmp/ntts_eval --n 40 \\
        --tts-python /tmp/tts-venv/bin/python

The sentences are the first ``--n`` of the corpus recipe's base_test split (recipes/corpus.py, seed 0:
wordnet-base examples that no training split speaks). Each voice below reads all of them; the audio
(16 kHz 16-bit WAV) and a NeMo manifest per voice go to OUT/VOICE/, and every manifest is streamed
through the exported demo model with greedy decoding exactly as ``brogue eval`` does
(``brogue.clients.eval``). Synthesis runs in ``--tts-python`` (a Python that has the TTS packages,
default: this one) as ``neural_tts_eval.py synth``; scoring needs brogue (the main venv). Where the
synthesising Python has ``pocketsphinx``, its WER (the PyPI wheel's en-us model with its LM) is
reported beside, as a check that the audio is intelligible English at all. Results: OUT/results.json
and a table on stdout.

Measured (40 sentences; synthesis in a venv with the TTS packages and pocketsphinx 5, scoring in
the main venv, the whole run inside ``unshare -n``, i.e. with no network; about 14 minutes of synthesis on one
core, most of it Kokoro):

    unshare -n .venv/bin/python recipes/neural_tts_eval.py --out /tmp/ntts_eval --n 40 \
        --tts-python /tmp/tts-venv/bin/python

    voice                               demo greedy WER   CER    pocketsphinx WER
    espeak-ng:en-us                     0.259             0.051  0.832
    piper:joe                           0.872             0.462  0.287
    piper:joe-slow-low                  1.009             0.600  0.670
    piper:joe-fast-high                 0.875             0.432  0.252
    kokoro:jf_alpha                     0.981             0.565  0.891
    kokoro:jf_gongitsune                0.903             0.460  0.346
    kokoro:jf_nezumi                    0.910             0.470  0.399
    kokoro:jf_tebukuro                  1.019             0.552  0.819
    kokoro:jm_kumo                      0.773             0.337  0.277
    kokoro:jm_kumo*0.5+jf_nezumi*0.5    0.844             0.377  0.252
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "model_repo" / "exported" / "demo"

# name -> (synth() voice, keyword arguments); "espeak" is espeak-ng en-us at its defaults.
VOICES = {
    "espeak-ng:en-us": ("espeak", {}),
    "piper:joe": ("piper:joe", {}),
    "piper:joe-slow-low": ("piper:joe", {"length_scale": 1.2, "pitch_cents": -200}),
    "piper:joe-fast-high": ("piper:joe", {"length_scale": 0.85, "pitch_cents": 300}),
    "kokoro:jf_alpha": ("kokoro:jf_alpha", {}),
    "kokoro:jf_gongitsune": ("kokoro:jf_gongitsune", {}),
    "kokoro:jf_nezumi": ("kokoro:jf_nezumi", {}),
    "kokoro:jf_tebukuro": ("kokoro:jf_tebukuro", {}),
    "kokoro:jm_kumo": ("kokoro:jm_kumo", {}),
    "kokoro:jm_kumo*0.5+jf_nezumi*0.5": ("kokoro:jm_kumo*0.5+jf_nezumi*0.5", {}),
}


def base_test_sentences(n: int, seed: int = 0) -> list[str]:
    """The corpus recipe's base_test sentences (its first split), first ``n``."""
    sys.path.insert(0, str(REPO))
    import random

    from recipes import corpus

    sents = corpus.wordnet_sentences()
    random.Random(seed).shuffle(sents)
    return sents[:min(n, corpus.SIZES["base_test"])]


def espeak(text: str):
    """espeak-ng en-us at its default speed and pitch, 16 kHz float32 (sox -G, as the corpus)."""
    import numpy as np

    p = subprocess.run(["espeak-ng", "-v", "en-us", "--stdout", text], capture_output=True, check=True)
    raw = subprocess.run(["sox", "-R", "-G", "-t", "wav", "-", "-t", "raw", "-e", "floating-point",
                          "-b", "32", "-c", "1", "-r", "16000", "-", "rate", "16000"],
                         input=p.stdout, capture_output=True, check=True).stdout
    return np.frombuffer(raw, "<f4").astype(np.float32)


def synth_all(out: Path, names: list[str]) -> None:
    """Stage 1 (the TTS Python): OUT/sentences.json -> OUT/VOICE/NNN.wav + OUT/VOICE/manifest.json."""
    sys.path.insert(0, str(REPO))
    from recipes import neural_tts as nt

    try:
        from pocketsphinx import Decoder
        ps = Decoder(samprate=16000, loglevel="FATAL")
    except ImportError:
        ps = None
    texts = json.loads((out / "sentences.json").read_text())
    for name in names:
        voice, kw = VOICES[name]
        d = out / name.replace(":", "_").replace("*", "x").replace("+", "_")
        d.mkdir(parents=True, exist_ok=True)
        t0, seconds, rows = time.time(), 0.0, []
        for i, text in enumerate(texts):
            audio = espeak(text) if voice == "espeak" else nt.synth(voice, text, **kw)
            nt.write_wav(d / f"{i:03d}.wav", audio)
            seconds += len(audio) / nt.RATE
            row = {"audio_filepath": f"{i:03d}.wav", "duration": round(len(audio) / nt.RATE, 3), "text": text,
                   "voice": name}
            if ps is not None:
                import numpy as np

                ps.start_utt()
                ps.process_raw((np.clip(audio, -1, 1) * 32767).astype(np.int16).tobytes(), full_utt=True)
                ps.end_utt()
                row["pocketsphinx"] = ps.hyp().hypstr if ps.hyp() else ""
            rows.append(row)
        with open(d / "manifest.json", "w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
        el = time.time() - t0
        print(f"{name}: {len(rows)} utterances, {seconds:.0f} s of audio in {el:.0f} s", flush=True)


def score(out: Path, names: list[str]) -> list[dict]:
    """Stage 2 (the main venv): the demo model's greedy WER per voice."""
    from brogue.clients.eval import error_rates, evaluate, make_runner

    runner, _ = make_runner(DEMO, None, REPO / "model_repo" / "adapters", decoder="greedy")
    results = []
    for name in names:
        m = out / name.replace(":", "_").replace("*", "x").replace("+", "_") / "manifest.json"
        res = evaluate(m, model_dir=DEMO, runner=runner, decoder="greedy")
        rows = [json.loads(l) for l in open(m)]
        r = {"voice": name, "utterances": res.n, "audio_s": round(sum(x["duration"] for x in rows), 1),
             "wer": round(res.wer, 4), "cer": round(res.cer, 4)}
        if rows and "pocketsphinx" in rows[0]:
            r["pocketsphinx_wer"] = round(error_rates([x["text"] for x in rows],
                                                      [x["pocketsphinx"] for x in rows])[0], 4)
        r["examples"] = [{"ref": a, "hyp": b} for a, b in list(zip(res.refs, res.hyps))[:3]]
        results.append(r)
        peer = f"  pocketsphinx WER {r['pocketsphinx_wer']:.3f}" if "pocketsphinx_wer" in r else ""
        print(f"{name:36s} WER {r['wer']:.3f}  CER {r['cer']:.3f}{peer}", flush=True)
    return results


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("stage", nargs="?", default="all", choices=["all", "synth", "score"])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--n", type=int, default=40, help="sentences (of base_test's 150)")
    ap.add_argument("--voices", nargs="+", default=list(VOICES), choices=list(VOICES))
    ap.add_argument("--tts-python", default=sys.executable, help="a Python with the TTS packages")
    a = ap.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    if a.stage == "synth":
        return synth_all(a.out, a.voices)
    if a.stage == "all":
        (a.out / "sentences.json").write_text(json.dumps(base_test_sentences(a.n), indent=0))
        subprocess.run([a.tts_python, __file__, "synth", "--out", str(a.out), "--voices", *a.voices],
                       check=True)
    results = score(a.out, a.voices)
    (a.out / "results.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
