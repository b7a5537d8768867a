"""recipes/corpus.py: the accent voices (phoneme mapping onto another language's espeak-ng voice)
and the voice pools' invariants. Needs the espeak-ng and sox binaries (.ci/run installs them);
the full corpus (mbrola, pico, Festival, 11 hours) is built by `brogue corpus`, not here."""

from __future__ import annotations

import random
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from recipes import corpus  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def _binaries():
    missing = [b for b in ("espeak-ng", "sox") if shutil.which(b) is None]
    assert not missing, f"{missing} not installed (apt-get install espeak-ng sox)"


def words(ph: str) -> list[str]:
    return ph.split()


def test_german_accent_maps_th_w_and_devoices_final_consonants():
    en = corpus._mapped_phonemes("the thin wet dog was big", {})  # identity: the en-us phonemes
    de = corpus.german_phonemes("the thin wet dog was big")
    assert en.split()[0].startswith("D") and en.split()[1].startswith("T")
    the, thin, wet, dog, was, big = words(de)
    assert the.startswith("z") and thin.startswith("s")  # th -> z / s
    assert wet.startswith("v") and was.startswith("v")  # w -> v
    assert dog.endswith("k") and big.endswith("k") and was.endswith("s")  # final devoicing
    assert "d" in dog and "b" in big  # ... of the final consonant only


def test_indian_accent_maps_th_and_w_without_devoicing():
    the, thin, wet, dog = words(corpus.indian_phonemes("the thin wet dog"))
    assert the.startswith("d") and thin.startswith("t#")  # th -> d / aspirated t
    assert wet.startswith("v")
    assert dog.endswith("g")


def test_mapping_keeps_stress_marks_and_word_count():
    text = "someone should vet this report before it goes out"
    for f in (corpus.indian_phonemes, corpus.german_phonemes):
        ph = f(text)
        assert len(ph.split()) == len(corpus._mapped_phonemes(text, {}).split())
        assert "'" in ph


@pytest.mark.parametrize("engine,voice", [("espeak-de", "de+m3"), ("espeak-hi", "hi+f2")])
def test_a_mapped_accent_voice_synthesises_a_16k_clip(tmp_path, engine, voice):
    import soundfile as sf

    rel = "x/00000.wav"
    (tmp_path / "x").mkdir()
    job = {"path": str(tmp_path / rel), "rel": rel, "engine": engine, "voice": voice,
           "text": "the weather was very good", "speed": 160, "pitch": 50, "tempo": 1.0, "cents": 0,
           "pad": (0.1, 0.2)}
    row = corpus._job(job)
    assert row is not None, "synthesis failed (see stderr)"
    info = sf.info(tmp_path / rel)
    assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
    assert info.duration == pytest.approx(row["duration"], abs=1e-3)
    assert 1.0 < info.duration < 4.0
    assert row["voice"] == f"{engine}:{voice}"


def test_german_sets_vary_speakers_and_hold_out_the_test_variants():
    train, test = corpus.accent_voices("german", "train"), corpus.accent_voices("german", "test")
    train_voices = {v for _, v, _ in train}
    assert {v for _, v, _ in test} == {f"de+{v}" for v in corpus.ESPEAK_TEST_VARIANTS}
    assert not train_voices & {v for _, v, _ in test}
    assert sum(e == "espeak-de" for e, _, _ in train) == len(corpus.ESPEAK_TRAIN_VARIANTS)


def test_german_train_pool_draws_tempo_on_the_same_rows_as_the_four_voice_pool(tmp_path):
    """The pool's rng draws must not move: only pico rows draw sox tempo and pitch, so pico keeps
    the last quarter of the weight, as in the four-voice pool, and every split planned after this
    one keeps its audio."""
    old = [("espeak", v, 1.0) for v in ("mb-de1-en", "mb-de2-en", "mb-de4-en")] + [("pico", "de-DE", 1.0)]
    new = corpus.accent_voices("german", "train")
    sentences = [f"sentence {i}" for i in range(2000)]
    a = corpus.make_jobs("g", sentences, old, random.Random(5), tmp_path)
    b = corpus.make_jobs("g", sentences, new, random.Random(5), tmp_path)
    assert [j["engine"] == "pico" for j in a] == [j["engine"] == "pico" for j in b]
    assert [(j["speed"], j["pitch"], j["tempo"], j["cents"], j["pad"]) for j in a] == \
        [(j["speed"], j["pitch"], j["tempo"], j["cents"], j["pad"]) for j in b]


def _plan_and_jobs(sizes: dict, root: Path):
    rng = random.Random(0)
    letters = "abcdefghijklmnopqrstuvwxyz"
    word = lambda i: "".join(letters[(i // 26 ** k) % 26] for k in range(4))  # noqa: E731 (normalise drops digits)
    sents = [f"sentence {word(i)} of the pool" for i in range(30000)]
    terms = [f"drug{word(i)}" for i in range(1000)]
    plan = corpus.plan_splits(sents, terms, rng, sizes)
    jobs = {name: corpus.make_jobs(name, s, v, rng, root) for name, (s, v) in plan.items()}
    return plan, jobs


def test_the_second_base_training_split_is_planned_last_and_changes_no_other_split(tmp_path):
    """base_train2 came after the demo model's first training: every other split (its sentences,
    voices and synthesis draws) must be what it was without it, and it speaks no sentence that any
    other split speaks."""
    plan, jobs = _plan_and_jobs(dict(corpus.SIZES), tmp_path / "with")
    without = {k: v for k, v in corpus.SIZES.items() if k != "base_train2"}
    old_plan, old_jobs = _plan_and_jobs(without, tmp_path / "without")
    assert list(plan)[-1] == "base_train2" and list(plan)[:-1] == list(old_plan)
    strip = lambda js: [{k: v for k, v in j.items() if k != "path"} for j in js]  # noqa: E731
    for name in old_plan:
        assert plan[name] == old_plan[name], name
        assert strip(jobs[name]) == strip(old_jobs[name]), name
    extra = set(plan["base_train2"][0])
    assert len(extra) == corpus.SIZES["base_train2"]
    assert not extra & {t for name, (ss, _) in old_plan.items() for t in ss}
    assert plan["base_train2"][1] == corpus.base_voices("train")


def test_definitions_leave_out_every_synset_that_holds_a_held_out_sentence():
    """The LM's definitions text (needs Debian's wordnet-base): a held-out example takes its synset's
    definitions with it; every other synset's definitions are there, normalised."""
    # WordNet 3.0's 'dog' synset: "a member of the genus Canis ...; \"the dog barked all night\""
    everything = corpus.wordnet_definitions(set())
    dog = [d for d in everything if d.startswith("a member of the genus canis")]
    assert dog and all(set(d) <= corpus.VOCAB for d in everything)
    held = {corpus.normalise("the dog barked all night")}
    without = corpus.wordnet_definitions(held)
    assert not [d for d in without if d.startswith("a member of the genus canis")]
    assert len(everything) - len(without) < 10  # only that synset's (and twins') definitions go
    assert set(without) < set(everything)


def test_definition_sentences_read_like_the_examples_and_hold_no_medical_term():
    """base_train3's pool: 25-110 characters, 5+ words, no word from the domain set's terms; the
    draw is the seed's alone."""
    defs = ["a drug used to treat amoxicillin allergy in the patient", "too short here",
            "a member of the genus canis that has been domesticated", "x " * 60,
            "an instrument that measures the pressure of the air"]
    pool = corpus.definition_sentences(defs, ["amoxicillin", "statin"])
    assert pool == ["a member of the genus canis that has been domesticated",
                    "an instrument that measures the pressure of the air"]
    a = corpus.plan_definitions(defs, ["amoxicillin"], random.Random(3), 2)
    assert sorted(a) == pool and a == corpus.plan_definitions(defs, ["amoxicillin"], random.Random(3), 2)
    with pytest.raises(RuntimeError, match="not enough definitions"):
        corpus.plan_definitions(defs, ["amoxicillin"], random.Random(3), 3)
