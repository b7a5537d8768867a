"""The honest split: evaluation voices, sentences and text sources that no training split holds.

Run after ``recipes/corpus.py``, on the same folder:

    python recipes/corpus_heldout.py --out /work/data --seed 0

The first corpus's test splits share voice families (espeak-ng's speaker variants, the same
engines) and, for the medical set, sentence templates with training, so they overstate what an
adapter does for a voice it never heard. This recipe writes, beside them:

*Held-out evaluation splits* (never used for training or for tuning):

    base_heldout.json        the base test sentences in voices no training split has: Piper's joe (a
                             natural US voice), pico en-GB, mbrola en1 and Festival's don (British)
    base_heldout_phone.json  the same audio through the call-centre path (G.712 band, 8 kHz, mu-law)
    {accent}_heldout.json    each accent's test sentences in held-out voice families: espeak-ng's
                             Klatt and female variant families (no accent training row has either),
                             and, where Debian ships one, a different engine with that accent:
                             Festival's rab (a Scottish speaker), mbrola in1/in2 (Hindi speakers,
                             mapped phonemes), mbrola de3 and de7 (German speakers)
    medical_heldout.json     medical text from held-out sources (``recipes/medical_text.py``): wordnet
                             synsets and whole frame kinds no training split speaks, in the base
                             held-out voices

Every row carries ``family`` (its voice family) and, for medical text, ``group``:
``brogue eval --by family`` breaks a WER down by them.

*Training splits* for the retrained demo:

    {accent}_adapt.json      {accent}_train.json less every row of a held-out voice family
    medical_adapt.json       medical text from the training synsets and frame kinds, in the base
                             training voices, plus the first corpus's templated medical_train rows
    base_natural.json        Kokoro-82M's natural voices (three Japanese speakers reading English,
                             their blends, speed and pitch varied) on base training sentences
    base_aug.json            base training and natural rows degraded by recipes/augment.py
                             (reverberation, noise at 0-20 dB SNR, the mu-law telephone path)

It also removes the held-out medical synsets' definitions and examples from the base LM's text
(``lm_text.txt.gz``, ``lm_defs.txt.gz``), so that no held-out sentence reaches any LM.

Piper draws fresh noise on every call (its own default), so its rows differ from run to run; every
other row is the same for the same seed.
"""

from __future__ import annotations

import gzip
import json
import random
import sys
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from recipes import corpus  # noqa: E402
from recipes.medical_text import (FRAME_GROUPS, frame_sentences, gloss_sentences, medical_synsets,  # noqa: E402
                                  term_pools)

APT_PACKAGES = ["festvox-rablpc16k", "festvox-don", "mbrola-en1", "mbrola-de3", "mbrola-de7", "mbrola-in1",
                "mbrola-in2"]

# espeak-ng variant families that no accent training row may hold (they are dropped from the
# *_adapt manifests); the held-out accent splits are spoken in them.
HELD_OUT_VARIANTS = {"klatt": ["klatt", "klatt2", "klatt3", "klatt4", "klatt5", "klatt6"],
                     "female": ["f1", "f2", "f3", "f4", "f5"]}
HELD_OUT_FRAMES = ("patient_talk", "handover")  # medical frame kinds kept for evaluation
HELD_OUT_SYNSET_SHARE = 0.2  # of wordnet's medical synsets

SIZES = {"medical_heldout_gloss": 60, "medical_heldout_frame": 60, "medical_adapt_gloss": 300,
         "medical_adapt_frame": 300, "base_natural": 600, "base_aug": 1200}

KOKORO_TRAIN_VOICES = ("jm_kumo", "jf_gongitsune", "jf_nezumi")  # intelligible ones (docs/accuracy.md)
ACCENT_ESPEAK = {"scottish": ("espeak", "en-gb-scotland"), "caribbean": ("espeak", "en-029"),
                 "indian": ("espeak-hi", "hi"), "german": ("espeak-de", "de")}
ACCENT_OTHER_ENGINES = {"scottish": [("festival", "rab_diphone")],
                        "indian": [("espeak-hi", "mb-in1"), ("espeak-hi", "mb-in2")],
                        "german": [("espeak", "mb-de3-en"), ("espeak-de", "mb-de7")]}


# ----------------------------------------------------------------------------- voice families
def family(engine: str, voice: str) -> str:
    """The voice family of a row: ``espeak-ng klatt`` / ``espeak-ng female`` for a held-out variant,
    else the engine and voice without its variant (``festival rab_diphone``, ``piper joe``)."""
    name, _, variant = voice.partition("+")
    for fam, variants in HELD_OUT_VARIANTS.items():
        if variant in variants:
            return f"espeak-ng {fam}"
    if engine.startswith("espeak"):
        return f"mbrola {name[3:].removesuffix('-en')}" if name.startswith("mb-") else f"espeak-ng {name}"
    return f"{engine} {name}"


def is_held_out_variant(voice: str) -> bool:
    return any(voice.partition("+")[2] in v for v in HELD_OUT_VARIANTS.values())


def base_heldout_voices():
    return [("piper", "joe", 2.0), ("pico", "en-GB", 1.0), ("espeak", "mb-en1", 1.0), ("festival", "don_diphone", 1.0)]


def accent_heldout_voices(accent: str):
    engine, lang = ACCENT_ESPEAK[accent]
    pools = [(engine, f"{lang}+{v}", 1.0 / len(vs)) for vs in HELD_OUT_VARIANTS.values() for v in vs]
    others = ACCENT_OTHER_ENGINES.get(accent, [])
    pools += [(e, v, 1.0 / len(others)) for e, v in others]
    return pools


# ----------------------------------------------------------------------------- jobs
def neural_jobs(name: str, sentences: list[str], voices, rng: random.Random, root: Path) -> list[dict]:
    """Jobs for Piper / Kokoro voices: rate, pitch (cents) and, for Kokoro, a blend of two voices
    drawn per sentence."""
    (root / name).mkdir(parents=True, exist_ok=True)
    jobs = []
    for i, text in enumerate(sentences):
        engine, voice, _ = rng.choices(voices, [w for _, _, w in voices])[0]
        if engine == "kokoro" and rng.random() < 0.4:
            other = rng.choice([v for v in KOKORO_TRAIN_VOICES if v != voice])
            w = round(rng.uniform(0.3, 0.7), 2)
            voice = f"{voice}*{w}+{other}*{round(1 - w, 2)}"
        rate = round(rng.uniform(0.85, 1.2), 3)
        kw = {"speed": rate} if engine == "kokoro" else {"length_scale": round(1 / rate, 3)}
        kw["pitch_cents"] = rng.choice([0, rng.randint(-200, 200)])
        rel = f"{name}/{i:05d}.wav"
        jobs.append({"path": str(root / rel), "rel": rel, "engine": engine, "voice": voice, "text": text, "kw": kw,
                     "pad": (rng.uniform(0.05, 0.3), rng.uniform(0.1, 0.4))})
    return jobs


def _neural_job(job: dict) -> dict | None:
    from recipes import neural_tts

    try:
        audio = neural_tts.synth(f"{job['engine']}:{job['voice']}", job["text"], **job["kw"])
        pad = [np.zeros(int(p * neural_tts.RATE), np.float32) for p in job["pad"]]
        audio = np.concatenate([pad[0], audio, pad[1]])
        neural_tts.write_wav(job["path"], audio)
        return {"audio_filepath": job["rel"], "duration": round(len(audio) / neural_tts.RATE, 3),
                "text": job["text"], "voice": f"{job['engine']}:{job['voice']}", "engine": job["engine"]}
    except Exception as e:  # one sentence an engine chokes on must not stop the corpus
        print(f"skip {job['engine']}:{job['voice']} {job['text'][:40]!r}: {e}", file=sys.stderr)
        return None


def _any_job(job: dict) -> dict | None:
    row = _neural_job(job) if job["engine"] in ("piper", "kokoro") else corpus._job(job)
    if row is not None:
        row["family"] = family(job["engine"], job["voice"].split("*")[0])
        if "group" in job:
            row["group"] = job["group"]
    return row


def jobs_for(name: str, sentences: list[str], voices, rng: random.Random, root: Path) -> list[dict]:
    """One job per sentence, each voice drawn from ``voices`` (classic and neural engines mixed)."""
    classic = [v for v in voices if v[0] not in ("piper", "kokoro")]
    neural = [v for v in voices if v[0] in ("piper", "kokoro")]
    total = sum(w for *_, w in voices)
    p_neural = sum(w for *_, w in neural) / total
    out = []
    for i, text in enumerate(sentences):
        pick = neural if neural and (not classic or rng.random() < p_neural) else classic
        make = neural_jobs if pick is neural else corpus.make_jobs
        job = make(name, [text], pick, rng, root)[0]
        job["rel"] = f"{name}/{i:05d}.wav"
        job["path"] = str(root / job["rel"])
        out.append(job)
    return out


# ----------------------------------------------------------------------------- plan
def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in open(path)] if path.is_file() else []


def plan_medical(rng: random.Random, spoken: set[str], sz: dict[str, int]) -> dict[str, list[tuple[str, str]]]:
    """``{"medical_heldout" | "medical_adapt": [(sentence, group), ...], "_held_synsets": [...]}``:
    held-out synsets and frame kinds for evaluation, the rest for training; no sentence a base
    training split speaks. ``group``: ``gloss`` or ``frame KIND``."""
    synsets = medical_synsets()
    rng.shuffle(synsets)
    cut = int(len(synsets) * HELD_OUT_SYNSET_SHARE)
    held_syn, train_syn = synsets[:cut], synsets[cut:]
    pools = term_pools()
    train_kinds = [g for g in FRAME_GROUPS if g not in HELD_OUT_FRAMES]

    def glosses(syns, n):
        sents = [t for s in syns for t in gloss_sentences(s) if t not in spoken]
        rng.shuffle(sents)
        return [(t, "gloss") for t in sents[:n]]

    held = glosses(held_syn, sz["medical_heldout_gloss"])
    held += [(t, f"frame {k}") for t, k in frame_sentences(rng, list(HELD_OUT_FRAMES), pools,
                                                          sz["medical_heldout_frame"])]
    train = glosses(train_syn, sz["medical_adapt_gloss"])
    train += [(t, f"frame {k}") for t, k in frame_sentences(rng, train_kinds, pools, sz["medical_adapt_frame"])]
    held_text = {t for t, _ in held}
    train = [(t, g) for t, g in train if t not in held_text]
    return {"medical_heldout": held, "medical_adapt": train, "_held_synsets": held_syn}


def scrub_lm_text(out: Path, held_syn, held_sentences: set[str]) -> int:
    """Drop every held-out medical synset's definitions and examples, and every held-out sentence,
    from the base LM's text files; returns how many lines went."""
    drop = set(held_sentences)
    for s in held_syn:
        drop.update(s.definitions)
        drop.update(s.examples)
    gone = 0
    for name in ("lm_text.txt.gz", "lm_defs.txt.gz"):
        p = out / name
        if not p.is_file():
            continue
        lines = gzip.open(p, "rt").read().splitlines()
        keep = [ln for ln in lines if ln not in drop]
        gone += len(lines) - len(keep)
        corpus.write_text(p, keep)
    return gone


def augmented(out: Path, name: str, rows: list[tuple[Path, dict]], seed: int, phone_only: bool = False) -> list[dict]:
    """Degraded copies of ``rows`` ((manifest folder, row)) written to ``out/name``; the call-centre
    path alone when ``phone_only``."""
    import soundfile as sf

    from recipes import augment

    (out / name).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    babble = [sf.read(d / r["audio_filepath"], dtype="float32")[0] for d, r in rows[:16]]
    new = []
    for i, (d, r) in enumerate(rows):
        x, sr = sf.read(d / r["audio_filepath"], dtype="float32")
        if phone_only:
            y, applied = augment.telephone(x, "mulaw"), {"telephone": {"codec": "mulaw"}}
        else:
            y, applied = augment.augment(x, rng, others=babble)
        rel = f"{name}/{i:05d}.wav"
        sf.write(out / rel, y, sr, subtype="PCM_16")
        new.append({**r, "audio_filepath": rel, "augment": applied})
    return new


def build(out: Path, seed: int = 0, workers: int = 2, scale: float = 1.0, log=print, only=None) -> dict:
    """Write every split above (or those named in ``only``) into ``out``, which holds the first corpus."""
    corpus.APT_PACKAGES = sorted(set(corpus.APT_PACKAGES) | set(APT_PACKAGES))
    corpus.ensure_packages(log)
    rng = lambda name: random.Random(f"{seed}:{name}")  # noqa: E731  one generator per split: each stays as it is
    sz = {k: max(4, int(v * scale)) for k, v in SIZES.items()}
    spoken = {r["text"] for m in ("base_train", "base_train2", "base_train3") for r in read_rows(out / f"{m}.json")}
    med = plan_medical(rng("medical"), spoken, sz)
    texts = lambda m: [r["text"] for r in read_rows(out / f"{m}.json")]  # noqa: E731
    base1 = texts("base_train")
    plan = {"base_heldout": (texts("base_test"), base_heldout_voices(), None)}
    for a in corpus.ACCENTS:
        plan[f"{a}_heldout"] = (texts(f"{a}_test"), accent_heldout_voices(a), None)
    plan["medical_heldout"] = ([t for t, _ in med["medical_heldout"]], base_heldout_voices(),
                               [g for _, g in med["medical_heldout"]])
    plan["medical_adapt"] = ([t for t, _ in med["medical_adapt"]],
                             [v for v in corpus.base_voices("train") if not is_held_out_variant(v[1])],
                             [g for _, g in med["medical_adapt"]])
    plan["base_natural"] = (rng("base_natural").sample(base1, min(sz["base_natural"], len(base1))),
                            [("kokoro", v, 1.0) for v in KOKORO_TRAIN_VOICES], None)
    jobs = {}
    for name, (sents, voices, groups) in plan.items():
        jobs[name] = jobs_for(name, sents, voices, rng(f"voices:{name}"), out)
        for j, g in zip(jobs[name], groups or []):
            j["group"] = g
    held_text = {t for n, (s, _, _) in plan.items() if n.endswith("_heldout") for t in s}
    log(f"LM text: {scrub_lm_text(out, med['_held_synsets'], held_text)} held-out lines removed")
    summary_path = out / "corpus_heldout_summary.json"
    summary = json.loads(summary_path.read_text()) if only and summary_path.is_file() else {}
    t0 = time.time()

    def write(name, rows):
        with open(out / f"{name}.json", "w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
        fams: dict[str, int] = {}
        for r in rows:
            fams[r.get("family", "")] = fams.get(r.get("family", ""), 0) + 1
        hours = sum(r["duration"] for r in rows) / 3600
        summary[name] = {"utterances": len(rows), "hours": round(hours, 3), "families": fams}
        log(f"{name}: {len(rows)} utterances, {hours * 60:.1f} min ({time.time() - t0:.0f} s)")

    want = lambda n: not only or n in only  # noqa: E731
    with Pool(workers) as pool:
        for name, js in jobs.items():
            if want(name):
                write(name, [r for r in pool.imap(_any_job, js, chunksize=4) if r is not None])
    for a in corpus.ACCENTS:
        if want(f"{a}_adapt"):
            write(f"{a}_adapt", [r for r in read_rows(out / f"{a}_train.json") if not is_held_out_variant(r["voice"])])
    if want("medical_adapt"):
        rows = read_rows(out / "medical_adapt.json") + [dict(r, group="template")
                                                         for r in read_rows(out / "medical_train.json")]
        write("medical_adapt", rows)
    if want("base_heldout_phone"):
        write("base_heldout_phone", augmented(out, "base_heldout_phone",
                                              [(out, r) for r in read_rows(out / "base_heldout.json")], seed,
                                              phone_only=True))
    if want("base_aug"):
        src = read_rows(out / "base_train.json")
        rows = [(out, r) for r in random.Random(seed).sample(src, min(sz["base_aug"], len(src)))]
        rows += [(out, r) for r in read_rows(out / "base_natural.json")]
        write("base_aug", augmented(out, "base_aug", rows, seed + 1))
    summary["_seed"], summary["_scale"] = seed, scale
    summary_path.write_text(json.dumps(summary, indent=1))
    return summary


def main(argv=None):
    # 3 synthesis processes: a Kokoro process leaves about a third of its core idle
    corpus.run_cli(build, __doc__, argv, workers=3)


if __name__ == "__main__":
    main()
