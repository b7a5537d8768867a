"""Synthesise the demo corpus: a multi-voice base set, accent sets, a medical domain set, test splits.

Run as ``brogue corpus --out /work/data --seed 0`` (or ``python recipes/corpus.py --out ... --seed 0``).
It installs its Debian packages if missing (contrib + non-free through a private sources list), then
writes NeMo manifests (JSON lines: audio_filepath relative to the manifest's folder, duration, text,
plus ``voice``/``engine`` fields) and 16 kHz mono 16-bit WAVs:

    DATA/base_train.json  base_train2.json (more of the same)  base_train3.json (wordnet definitions)
        base_test.json  base_test_ffp.json
        (flite/Festival/pico part of base_test)
    DATA/{scottish,caribbean,indian,german,medical}_{train,test}.json
    DATA/corpus_summary.json   (hours per manifest)
    DATA/lm_text.txt.gz  lm_defs.txt.gz   (text for the base model's character LM: every wordnet
        sentence no test or dev split speaks; wordnet's definitions, less held-out synsets')

Sentences come from wordnet-base examples, normalised to the model's vocabulary (" a-z'"). Test
sentences are never used for training; test splits use speaker variants unseen in training.
The base set holds general (US) English only: no accent voice and no medical term is in it.
Each accent set is one accent in many espeak-ng speaker variants (test variants held out):
en-gb-scotland, en-029, and two made by mapping en-us phonemes onto another language's voice,
Indian English (the Hindi voice) and German English (the German voice; its training split adds
the five mbrola German voices reading English and pico de-DE as further speakers).
The voice choices rest on measured facts about these TTS engines (which voices exist, which
variants sound distinct).

One recipe in one file (about 450 lines): the split plan, the sentence sources and the synthesis
decide together which sentence and voice goes to which split, and are read top to bottom.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from multiprocessing import Pool
from pathlib import Path

from brogue.engine.lm import write_text

APT_PACKAGES = [
    "espeak-ng", "flite", "festival", "festvox-kallpc16k", "festvox-kdlpc16k", "festvox-us-slt-hts",
    "festvox-us1", "festvox-us2", "festvox-us3", "libttspico-utils", "mbrola", "mbrola-us1", "mbrola-us2",
    "mbrola-us3", "mbrola-de1", "mbrola-de2", "mbrola-de4", "mbrola-de5", "mbrola-de6", "sox",
    "wordnet-base", "hunspell-en-med",
]
SOURCES = """deb http://deb.debian.org/debian bookworm main contrib non-free
deb http://deb.debian.org/debian bookworm-updates main contrib non-free
"""

VOCAB = set(" abcdefghijklmnopqrstuvwxyz'")

# espeak-ng speaker variants: the same train/test split for every espeak-based set, so that no
# accent adapter can win by learning a voice (see the notes: accents are a mild acoustic change).
ESPEAK_TRAIN_VARIANTS = ["m1", "m2", "m3", "m4", "m5", "m8", "f1", "f2", "f3", "klatt", "klatt2", "klatt3", "klatt5",
                         "Storm", "Andy", "Annie", "Denis", "Gene", "Jacky", "Lee", "Mario", "Michael", "Mike",
                         "adam", "anika", "aunty", "belinda", "benjamin", "boris", "caleb", "david", "edward",
                         "grandma", "grandpa", "iven", "iven2", "john", "linda", "max", "norbert", "paul",
                         "quincy", "rob", "robert", "steph", "travis", "victor", "zac"]
ESPEAK_TEST_VARIANTS = ["m6", "m7", "f4", "f5", "klatt4"]

# Per-set sizes in utterances (wordnet sentences average about 3.5 s once spoken).
SIZES = {"base_train": 12000, "base_test": 150, "base_dev": 150, "accent_train": 360, "accent_test": 70,
         "medical_train": 300, "medical_test": 60, "base_train2": 12000, "base_train3": 8000}

ACCENTS = ("scottish", "caribbean", "indian", "german")


# ----------------------------------------------------------------------------- setup
def ensure_packages(log=print) -> None:
    missing = [p for p in APT_PACKAGES
               if subprocess.run(["dpkg", "-s", p], capture_output=True).returncode != 0]
    if not missing:
        return
    log(f"installing apt packages: {' '.join(missing)}")
    d = Path(tempfile.mkdtemp(prefix="brogue-apt-"))
    (d / "sources.list").write_text(SOURCES)
    opts = ["-o", f"Dir::Etc::SourceList={d / 'sources.list'}", "-o", "Dir::Etc::SourceParts=/dev/null"]
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(sudo + ["apt-get", *opts, "update"], check=True, env=env)
    subprocess.run(sudo + ["apt-get", *opts, "install", "-y", "--no-install-recommends", *missing],
                   check=True, env=env)


# ----------------------------------------------------------------------------- text
def normalise(text: str) -> str:
    """Lowercase, map hyphens/slashes to spaces, drop everything outside " a-z'"."""
    t = text.lower().replace("-", " ").replace("/", " ")
    t = re.sub(r"[`\u2019]", "'", t)
    t = "".join(c for c in t if c in VOCAB)
    t = re.sub(r"\s+", " ", t).strip()
    return re.sub(r"(^| )'+|'+( |$)", r"\1\2", t).strip()


def wordnet_glosses():
    """Each wordnet synset's gloss (its definitions, then its quoted examples), from Debian's
    wordnet-base data files."""
    for pos in ("noun", "verb", "adj", "adv"):
        for line in open(f"/usr/share/wordnet/data.{pos}", encoding="latin-1"):
            if not line.startswith("  ") and "|" in line:
                yield line.split("|", 1)[1]


def wordnet_sentences() -> list[str]:
    out = set()
    for gloss in wordnet_glosses():
        for ex in re.findall(r'"([^"]+)"', gloss):
            if re.search(r"[0-9]", ex):
                continue
            t = normalise(ex)
            if 25 <= len(t) <= 110 and len(t.split()) >= 5:
                out.add(t)
    return sorted(out)


def wordnet_definitions(held: set[str]) -> list[str]:
    """Every wordnet gloss's definitions (the part before its examples, split at ';'), normalised,
    of 3+ words, for the base LM's text. A synset that holds a held-out (test or dev) sentence among
    its examples gives none, so that no definition written beside a held-out sentence reaches the
    LM; nor does a definition that is itself a held-out sentence."""
    out = set()
    for gloss in wordnet_glosses():
        if any(normalise(ex) in held for ex in re.findall(r'"([^"]+)"', gloss)):
            continue
        for part in gloss.split('"', 1)[0].split(";"):
            t = normalise(part)
            if len(t.split()) >= 3 and t not in held:
                out.add(t)
    return sorted(out)


def definition_sentences(defs: list[str], terms: list[str]) -> list[str]:
    """The definitions (``wordnet_definitions``) that read like the example sentences: 25-110
    characters, 5+ words, and no medical term (``terms``), so that the base set stays free of the
    domain set's words."""
    med = set(terms)
    return [d for d in defs if 25 <= len(d) <= 110 and len(d.split()) >= 5 and not med & set(d.split())]


def medical_terms() -> list[str]:
    terms = set()
    for line in open("/usr/share/hunspell/en_med_glut.dic", encoding="utf-8", errors="ignore"):
        w = line.strip().split("/")[0]
        if re.fullmatch(r"[a-z]{7,16}", w) and re.search(
                r"(mab|nib|pril|olol|sartan|statin|mycin|cillin|azole|pine|done|ide|ine|ectomy|otomy|oscopy|"
                r"plasty|itis|emia|algia|osis|pathy|gram|ostomy)$", w):
            terms.add(w)
    return sorted(terms)


MED_TEMPLATES = [
    "the patient was started on {a} and will continue {b} at the same dose",
    "history of {a} treated with {b}",
    "she is scheduled for {a} next week after a course of {b}",
    "discontinue {a} and begin {b} twice daily",
    "findings are consistent with {a} with no evidence of {b}",
    "he underwent {a} without complication and was given {b}",
    "plan is to increase {a} and monitor for {b}",
    "allergic to {a} tolerates {b}",
    "assessment {a} likely secondary to {b}",
    "continue {a} hold {b} until further notice",
    "prescribed {a} for {b} follow up in two weeks",
    "the biopsy showed {a} and we recommend {b}",
    "post operative course after {a} complicated by {b}",
    "differential includes {a} versus {b}",
    "recommend {a} and repeat {b} in three months",
]


def medical_sentences(rng: random.Random, terms: list[str], n: int, templates: list[str]) -> list[str]:
    out = set()
    while len(out) < n:
        a, b = rng.sample(terms, 2)
        out.add(normalise(rng.choice(templates).format(a=a, b=b)))
    return sorted(out)


# ----------------------------------------------------------------------------- voices
# Accents by phoneme mapping: en-us phonemes (espeak mnemonics, ``espeak-ng -x``) mapped onto another
# language's voice, which then speaks them (``espeak-ng -v hi|de "[[...]]"``), in every speaker variant.
_PH_TOKENS = sorted(["aI@", "aU@", "3:", "A:", "A@", "O:", "OI", "o@", "oU", "aI", "aU", "eI", "e@", "E@", "i@",
                     "I@", "U@", "u:", "i:", "@2", "@5", "@L", "I2", "a#", "tS", "dZ", "l-", "n-", "m-", "r-", "t#",
                     "i@3", "O2"], key=len, reverse=True)
# Indian English: retroflex t/d, th -> aspirated t / d, w -> v, monophthong eI/oU, tapped r.
_HI_MAP = {"t": "t.", "d": "d.", "T": "t#", "D": "d", "w": "v", "eI": "e:", "oU": "o:", "3:": "@r", "3": "@r",
           "A:": "a:", "A@": "a:r", "0": "O", "o@": "o:r", "e@": "e:r", "i@": "i:r", "I2": "I", "a#": "a",
           "*": "d.", "r-": "@r", "i@3": "i:r", "aI@": "aI@r", "aU@": "aU@r", "U@": "u:r", "E@": "e:r"}
# German English: th -> s / z, w -> v, ae -> E, the German (uvular, vocalised) r, monophthong eI/oU,
# no flap, and final devoicing (_DE_DEVOICE on each word's last consonant).
_DE_MAP = {"T": "s", "D": "z", "w": "v", "a": "E", "A@": "A:3", "0": "O", "O2": "O", "O:": "o:", "V": "a",
           "@2": "@", "@5": "@", "a#": "a", "I2": "I", "i": "i:", "3:": "W3", "eI": "e:", "oU": "o:", "OI": "OY",
           "e@": "E:3", "E@": "E:3", "i@": "i:3", "I@": "i:3", "U@": "u:3", "o@": "o:3", "i@3": "i:3",
           "aI@": "aI3", "aU@": "aU3", "*": "t", "t#": "t", "@L": "@l", "l-": "l", "n-": "n", "m-": "m", "r-": "3"}
_DE_DEVOICE = {"b": "p", "d": "t", "g": "k", "z": "s", "v": "f", "dZ": "tS"}


def _mapped_phonemes(text: str, table: dict[str, str], devoice: dict[str, str] | None = None) -> str:
    ph = subprocess.run(["espeak-ng", "-v", "en-us", "-x", "-q", text], capture_output=True, text=True,
                        check=True).stdout
    out = []
    for word in ph.replace("\n", " ").split():
        i, toks = 0, []
        while i < len(word):
            for tok in _PH_TOKENS:
                if word.startswith(tok, i):
                    break
            else:
                tok = word[i]
            toks.append(table.get(tok, tok))
            i += len(tok)
        if devoice:
            last = next((j for j in range(len(toks) - 1, -1, -1) if toks[j] not in ("'", ",", "_", ":")), None)
            if last is not None:
                toks[last] = devoice.get(toks[last], toks[last])
        out.append("".join(toks))
    return " ".join(out)


def indian_phonemes(text: str) -> str:
    return _mapped_phonemes(text, _HI_MAP)


def german_phonemes(text: str) -> str:
    return _mapped_phonemes(text, _DE_MAP, _DE_DEVOICE)


_MAPPED_ACCENTS = {"espeak-hi": indian_phonemes, "espeak-de": german_phonemes}  # engine -> phoneme mapping


def synth_raw(engine: str, voice: str, text: str, raw: Path, speed: int, pitch: int) -> None:
    """Write engine output (any rate) to ``raw``."""
    run = lambda cmd: subprocess.run(cmd, check=True, capture_output=True, timeout=120)  # noqa: E731
    if engine == "espeak":
        run(["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", str(raw), text])
    elif engine in _MAPPED_ACCENTS:
        mapped = _MAPPED_ACCENTS[engine](text)
        run(["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", str(raw), f"[[{mapped}]]"])
    elif engine == "flite":
        run(["flite", "-voice", voice, "-t", text, "-o", str(raw)])
    elif engine == "festival":
        txt = raw.with_suffix(".txt")
        txt.write_text(text + "\n")
        run(["text2wave", "-eval", f"(voice_{voice})", str(txt), "-o", str(raw)])
        txt.unlink()
    elif engine == "pico":
        run(["pico2wave", "-l", voice, "-w", str(raw), text])
    else:
        raise ValueError(engine)


def _job(job: dict) -> dict | None:
    out = Path(job["path"])
    raw = out.with_name(out.stem + ".raw.wav")
    try:
        synth_raw(job["engine"], job["voice"], job["text"], raw, job["speed"], job["pitch"])
        fx = []
        if job.get("tempo", 1.0) != 1.0:
            fx += ["tempo", "-s", f"{job['tempo']:.3f}"]
        if job.get("cents", 0):
            fx += ["pitch", str(job["cents"])]
        # -R: sox seeds its dither from the clock otherwise, and the same seed gave different samples
        subprocess.run(["sox", "-R", "-G", str(raw), "-c", "1", "-b", "16", str(out), *fx, "rate", "16000",
                        "pad", f"{job['pad'][0]:.2f}", f"{job['pad'][1]:.2f}"],
                       check=True, capture_output=True, timeout=120)
        raw.unlink(missing_ok=True)
        n = (out.stat().st_size - 44) // 2
        return {"audio_filepath": job["rel"], "duration": round(n / 16000, 3), "text": job["text"],
                "voice": f"{job['engine']}:{job['voice']}", "engine": job["engine"]}
    except Exception as e:  # an engine choking on one sentence must not stop the corpus
        raw.unlink(missing_ok=True)
        print(f"skip {job['engine']}:{job['voice']} {job['text'][:40]!r}: {e}", file=sys.stderr)
        return None


# voice pools: (engine, voice, weight); espeak voices get a variant suffix per utterance
def base_voices(split: str):
    var = ESPEAK_TRAIN_VARIANTS if split == "train" else ESPEAK_TEST_VARIANTS
    pools = [("espeak", f"en-us+{v}", 3.0 / len(var)) for v in var]
    pools += [("espeak", f"en-us-nyc+{v}", 0.6 / len(var)) for v in var]
    pools += [("espeak", v, 0.5) for v in ("mb-us1", "mb-us2", "mb-us3")]
    pools += [("flite", v, 0.45) for v in ("kal16", "rms", "slt", "awb")]
    pools += [("festival", v, 0.3) for v in ("kal_diphone", "ked_diphone", "cmu_us_slt_arctic_hts",
                                              "us1_mbrola", "us2_mbrola", "us3_mbrola")]
    pools += [("pico", "en-US", 1.0)]
    return pools


def accent_voices(accent: str, split: str):
    var = ESPEAK_TRAIN_VARIANTS if split == "train" else ESPEAK_TEST_VARIANTS
    if accent == "scottish":
        return [("espeak", f"en-gb-scotland+{v}", 1.0) for v in var]
    if accent == "caribbean":
        return [("espeak", f"en-029+{v}", 1.0) for v in var]
    if accent == "indian":
        return [("espeak-hi", f"hi+{v}", 1.0) for v in var]
    if accent == "german":
        # Like the Indian set: one accent (the German voice speaking mapped en-us phonemes) in every
        # speaker variant, test variants held out. Training adds the five mbrola German voices
        # reading English and pico de-DE as further speakers. pico keeps exactly the last quarter
        # of the weight, as when the set had four voices: its rows (and only they) draw sox tempo
        # and pitch, so every split planned after this one keeps its voices and random draws.
        if split == "train":
            return ([("espeak-de", f"de+{v}", 2.1 / len(var)) for v in var]
                    + [("espeak", f"mb-de{n}-en", 0.18) for n in (1, 2, 4, 5, 6)] + [("pico", "de-DE", 1.0)])
        return [("espeak-de", f"de+{v}", 1.0) for v in var]
    raise ValueError(accent)


def make_jobs(name: str, sentences: list[str], voices, rng: random.Random, root: Path) -> list[dict]:
    (root / name).mkdir(parents=True, exist_ok=True)
    weights = [w for _, _, w in voices]
    jobs = []
    for i, text in enumerate(sentences):
        engine, voice, _ = rng.choices(voices, weights)[0]
        speed, pitch = rng.randint(135, 195), rng.randint(25, 75)
        # engines without speed/pitch controls get sox tempo/pitch variety instead
        tempo, cents = 1.0, 0
        if engine in ("flite", "festival", "pico"):
            tempo, cents = round(rng.uniform(0.88, 1.15), 3), rng.choice([0, 0, rng.randint(-250, 250)])
        rel = f"{name}/{i:05d}.wav"
        jobs.append({"path": str(root / rel), "rel": rel, "engine": engine, "voice": voice, "text": text,
                     "speed": speed, "pitch": pitch, "tempo": tempo, "cents": cents,
                     "pad": (rng.uniform(0.05, 0.3), rng.uniform(0.1, 0.4))})
    return jobs


def plan_splits(sents: list[str], terms: list[str], rng: random.Random, sz: dict[str, int]) -> dict:
    """Each split's sentences and voice pool, in planning order: ``{name: (sentences, voices)}``.
    ``sents`` (shuffled wordnet sentences) are dealt out disjointly, tests first, then training;
    ``terms`` make the medical sentences. ``rng`` is the corpus's one generator: the medical draws
    here, then every synthesis draw in this order, so a split added last changes no other split."""
    pos = 0

    def take(n):
        nonlocal pos
        pos += n
        if pos > len(sents):
            raise RuntimeError("not enough sentences")
        return sents[pos - n:pos]

    plan: dict[str, tuple[list[str], list]] = {}
    plan["base_test"] = (take(sz["base_test"]), base_voices("test"))
    for a in ACCENTS:
        plan[f"{a}_test"] = (take(sz["accent_test"]), accent_voices(a, "test"))
    plan["base_train"] = (take(sz["base_train"]), base_voices("train"))
    for a in ACCENTS:
        plan[f"{a}_train"] = (take(sz["accent_train"]), accent_voices(a, "train"))
    terms = list(terms)
    rng.shuffle(terms)
    pool = terms[:800]  # the domain's working vocabulary
    t_test, t_train = MED_TEMPLATES[:4], MED_TEMPLATES[4:]  # test sentences use unseen templates
    plan["medical_test"] = (medical_sentences(rng, pool, sz["medical_test"], t_test), base_voices("test"))
    plan["medical_train"] = (medical_sentences(rng, pool, sz["medical_train"], t_train), base_voices("train"))
    # Planned last, so that adding it left every other split as it was: held-out voices like the
    # test split, unseen sentences; for tuning decoding (the LM weight), never for training.
    plan["base_dev"] = (take(sz["base_dev"]), base_voices("test"))
    # More base training speech: 12k further sentences in the training voices, again planned last so
    # that every split above stays as it was. The base model trained on base_train alone read its
    # training sentences at 19% greedy WER and unseen ones at 44%: it had learnt the sentences.
    if sz.get("base_train2"):
        plan["base_train2"] = (take(sz["base_train2"]), base_voices("train"))
    return plan


def plan_definitions(defs: list[str], terms: list[str], rng: random.Random, n: int) -> list[str]:
    """``n`` definitions (``definition_sentences``) drawn with ``rng``, for base_train3. ``defs``
    already leaves out every synset that holds a held-out sentence."""
    pool = definition_sentences(defs, terms)
    rng.shuffle(pool)
    if n > len(pool):
        raise RuntimeError(f"not enough definitions: {len(pool)} for {n}")
    return pool[:n]


def build(out: Path, seed: int = 0, workers: int = 2, scale: float = 1.0, log=print, only=None) -> dict:
    """Synthesise every split (or the splits named in ``only``; the plan, and so each split's
    content, is the same either way) into ``out``; returns the summary."""
    ensure_packages(log)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    sents = wordnet_sentences()
    rng.shuffle(sents)
    sz = {k: max(4, int(v * scale)) for k, v in SIZES.items()}
    plan = plan_splits(sents, medical_terms(), rng, sz)
    jobs: dict[str, list[dict]] = {name: make_jobs(name, s, v, rng, out) for name, (s, v) in plan.items()}
    # Text for the base model's character LM (`brogue lm`): every wordnet sentence that no test or
    # dev split speaks, training splits' included (sorted: the file does not depend on the seed's
    # shuffle, only on which sentences are held out).
    held = {t for name, (ss, _) in plan.items() if name.endswith(("_test", "_dev")) for t in ss}
    write_text(out / "lm_text.txt.gz", sorted(set(sents) - held))
    # ... and wordnet's definitions, less those of every synset that holds a held-out sentence: with
    # them the LM reads more of English (docs/decoding.md).
    defs = wordnet_definitions(held)
    write_text(out / "lm_defs.txt.gz", defs)
    # base_train3: definitions spoken in the training voices, for more sentences than wordnet's
    # examples hold (base_train2 took most of the rest). Planned after every synthesis draw above,
    # so that it changes no other split.
    if sz.get("base_train3"):
        plan["base_train3"] = (plan_definitions(defs, medical_terms(), rng, sz["base_train3"]),
                               base_voices("train"))
        jobs["base_train3"] = make_jobs("base_train3", plan["base_train3"][0], plan["base_train3"][1], rng, out)
    if only:
        unknown = set(only) - set(jobs)
        if unknown:
            raise ValueError(f"unknown splits {sorted(unknown)}; the corpus has {sorted(jobs)}")
        jobs = {k: v for k, v in jobs.items() if k in only}
    old = out / "corpus_summary.json"
    summary = json.loads(old.read_text()) if only and old.is_file() else {}
    t0 = time.time()
    with Pool(workers) as pool_:
        for name, js in jobs.items():
            rows = [r for r in pool_.imap(_job, js, chunksize=8) if r is not None]
            with open(out / f"{name}.json", "w") as f:
                for r in rows:
                    f.write(json.dumps(r) + "\n")
            hours = sum(r["duration"] for r in rows) / 3600
            summary[name] = {"utterances": len(rows), "hours": round(hours, 3)}
            log(f"{name}: {len(rows)} utterances, {hours * 60:.1f} min ({time.time() - t0:.0f} s)")
    # flite/Festival/pico part of the base test split (pocketsphinx's home ground)
    if "base_test" in jobs:
        rows = [json.loads(l) for l in open(out / "base_test.json")]
        with open(out / "base_test_ffp.json", "w") as f:
            for r in rows:
                if r["engine"] in ("flite", "festival", "pico"):
                    f.write(json.dumps(r) + "\n")
    summary["_seed"] = seed
    summary["_scale"] = scale
    (out / "corpus_summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def run_cli(build_fn, doc: str, argv=None, workers: int = 2) -> None:
    """The command line of a corpus recipe: ``--out --seed --workers --scale --only``, then
    ``build_fn(out, seed, workers, scale, only=...)``'s summary printed as JSON."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="the corpus folder")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=workers, help="synthesis processes")
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every set's size")
    ap.add_argument("--only", nargs="+", help="synthesise only these splits (e.g. base_dev)")
    a = ap.parse_args(argv)
    print(json.dumps(build_fn(a.out, a.seed, a.workers, a.scale, only=a.only), indent=1))


def main(argv=None):
    run_cli(build, __doc__, argv)


if __name__ == "__main__":
    main()
