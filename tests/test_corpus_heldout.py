"""recipes/corpus_heldout.py and recipes/medical_text.py: the honest split's invariants. No
evaluation voice family, no held-out medical synset or frame kind, and no held-out sentence reaches
a training split or the LM's text. Needs espeak-ng, sox, wordnet-base and hunspell-en-med (`make
test` installs them) and the Piper voice (a test dependency); mbrola, Festival and pico voices are
exercised by the recipe itself, not here."""

from __future__ import annotations

import gzip
import json
import random
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from recipes import corpus, corpus_heldout as ho, medical_text as mt  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def _data_files():
    for f in (mt.WORDNET_NOUNS, "/usr/share/hunspell/en_med_glut.dic"):
        assert Path(f).is_file(), f"{f} missing: apt-get install wordnet-base hunspell-en-med"


def families(pool) -> set[str]:
    return {ho.family(e, v) for e, v, _ in pool}


def test_no_base_training_voice_family_is_in_the_base_heldout_split():
    train = families(corpus.base_voices("train")) | families(corpus.base_voices("test"))
    held = families(ho.base_heldout_voices())
    assert held and not held & train, held & train
    assert "piper joe" in held  # the natural voice is for evaluation only


@pytest.mark.parametrize("accent", corpus.ACCENTS)
def test_no_accent_training_row_shares_a_family_with_its_heldout_split(accent):
    train = [(e, v, w) for e, v, w in corpus.accent_voices(accent, "train") if not ho.is_held_out_variant(v)]
    held = families(ho.accent_heldout_voices(accent))
    assert {"espeak-ng klatt", "espeak-ng female"} <= held
    assert not families(train) & held
    # the filter that makes {accent}_adapt.json drops exactly the held-out families
    every = corpus.accent_voices(accent, "train") + corpus.accent_voices(accent, "test")
    dropped = {ho.family(e, v) for e, v, _ in every if ho.is_held_out_variant(v)}
    assert dropped <= {"espeak-ng klatt", "espeak-ng female"}


def test_family_names():
    assert ho.family("espeak", "en-029+klatt3") == "espeak-ng klatt"
    assert ho.family("espeak-hi", "hi+f2") == "espeak-ng female"
    assert ho.family("espeak-hi", "hi+m3") == "espeak-ng hi"
    assert ho.family("espeak", "mb-de3-en") == "mbrola de3"
    assert ho.family("espeak-de", "mb-de7") == "mbrola de7"
    assert ho.family("festival", "rab_diphone") == "festival rab_diphone"


def test_medical_text_has_real_names_and_is_not_one_template():
    syn = mt.medical_synsets()
    names = {n for s in syn for n in s.names}
    assert {"metformin", "furosemide", "appendicitis", "appendectomy"} <= names
    sents = [t for s in syn for t in mt.gloss_sentences(s)]
    assert len(sents) > 2000 and all(set(t) <= corpus.VOCAB for t in sents)
    assert any(t.startswith("metformin is ") for t in sents)
    pools = mt.term_pools()
    assert all(len(v) > 500 for v in pools.values()), {k: len(v) for k, v in pools.items()}
    out = mt.frame_sentences(random.Random(0), ["orders", "history"], pools, 40)
    assert len({t for t, _ in out}) == 40 and not any("{" in t for t, _ in out)
    assert {k for _, k in out} == {"orders", "history"}


def test_medical_plan_holds_out_whole_synsets_and_frame_kinds():
    sz = {k: v for k, v in ho.SIZES.items()}
    plan = ho.plan_medical(random.Random(1), set(), sz)
    held, train = plan["medical_heldout"], plan["medical_adapt"]
    assert len(held) == sz["medical_heldout_gloss"] + sz["medical_heldout_frame"]
    assert not {t for t, _ in held} & {t for t, _ in train}
    held_syn = {s.offset for s in plan["_held_synsets"]}
    train_text = {t for t, _ in train}
    for s in mt.medical_synsets():
        if s.offset in held_syn:
            assert not set(mt.gloss_sentences(s)) & train_text, s
    held_kinds = {g for _, g in held if g.startswith("frame ")}
    train_kinds = {g for _, g in train if g.startswith("frame ")}
    assert held_kinds == {f"frame {k}" for k in ho.HELD_OUT_FRAMES}
    assert train_kinds and not held_kinds & train_kinds


def test_scrub_removes_heldout_definitions_from_the_lm_text(tmp_path):
    syn = mt.medical_synsets()[:3]
    keep = "a sentence nobody holds out"
    for name in ("lm_text.txt.gz", "lm_defs.txt.gz"):
        corpus.write_text(tmp_path / name, [keep, *syn[0].definitions, *syn[1].examples, "held out words here"])
    ho.scrub_lm_text(tmp_path, syn[:2], {"held out words here"})
    for name in ("lm_text.txt.gz", "lm_defs.txt.gz"):
        assert gzip.open(tmp_path / name, "rt").read().splitlines() == [keep]


def test_a_heldout_accent_job_and_a_piper_job_write_rows_with_their_family(tmp_path):
    import soundfile as sf

    rng = random.Random(0)
    jobs = ho.jobs_for("x", ["the thin wet dog was big", "we will meet at noon"],
                       [("espeak", "en-gb-scotland+klatt3", 1.0)], rng, tmp_path)
    jobs += ho.jobs_for("y", ["the thin wet dog was big"], [("piper", "joe", 1.0)], rng, tmp_path)
    for j in jobs:
        j["group"] = "g"
    rows = [ho._any_job(j) for j in jobs]
    assert [r["family"] for r in rows] == ["espeak-ng klatt", "espeak-ng klatt", "piper joe"]
    assert all(r["group"] == "g" for r in rows)
    for r in rows:
        a, sr = sf.read(tmp_path / r["audio_filepath"])
        assert sr == 16000 and abs(len(a) / sr - r["duration"]) < 0.01 and abs(a).max() > 0.05
    assert json.dumps(rows)  # JSON-ready manifest rows
