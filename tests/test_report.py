"""recipes/report.py: the accuracy table, the adapter matrix and the target checks, from results
(the evaluation itself is `brogue eval`'s, tested in test_adapt_eval.py)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from recipes import report  # noqa: E402

NAMES = report.ADAPTED


def split(base: float, each: dict[str, float], ps: float = 0.5) -> dict:
    d = {"utterances": 10, "minutes": 1.0, "base": {"wer": base}, "pocketsphinx": {"wer": ps},
         "with_each_adapter": {n: {"wer": w, "name": f"{n}@v1"} for n, w in each.items()}}
    return d


def results(own: dict[str, float], other: float, base_each: float = 0.21) -> dict:
    """Every adapted split at base WER 0.8, its own adapter at own[s], every other adapter at other."""
    res = {"base": split(0.2, {n: base_each for n in NAMES}), "base_ffp": {"minutes": 0.5, "base": {"wer": 0.25},
                                                                           "pocketsphinx": {"wer": 0.3}}}
    for s in NAMES:
        d = split(0.8, {n: own[s] if n == s else other for n in NAMES})
        d["adapter"] = d["with_each_adapter"][s]
        d["wrong_adapter"] = report.best_wrong(d, s)
        res[s] = d
    return res


def test_the_wrong_adapter_column_is_the_best_other_adapter():
    d = split(0.8, {"scottish": 0.4, "caribbean": 0.7, "indian": 0.9, "german": 0.85, "medical": 0.6})
    assert report.best_wrong(d, "scottish")["name"] == "medical@v1"
    assert report.best_wrong(d, "medical")["name"] == "scottish@v1"


def test_checks_say_met_only_when_no_other_adapter_helps():
    good = report.make_checks(results({n: 0.4 for n in NAMES}, other=0.85))
    assert all("NOT met" not in c for c in good if c.startswith("wrong adapters")), good
    assert sum(c.startswith("wrong adapters") for c in good) == len(NAMES)
    assert all(c.endswith("yes") for c in good if "own adapter is the best" in c)

    res = results({n: 0.4 for n in NAMES}, other=0.85)
    res["caribbean"]["with_each_adapter"]["indian"]["wer"] = 0.7  # helps: base is 0.8
    res["caribbean"]["wrong_adapter"] = report.best_wrong(res["caribbean"], "caribbean")
    bad = report.make_checks(res)
    line = next(c for c in bad if c.startswith("wrong adapters on caribbean"))
    assert "best indian 70.0%" in line and "NOT met" in line and "1 of 4 help: indian" in line


def test_checks_flag_a_split_whose_own_adapter_is_not_the_best():
    res = results({n: 0.4 for n in NAMES}, other=0.85)
    res["german"]["with_each_adapter"]["medical"]["wer"] = 0.3
    checks = report.make_checks(res)
    assert "german's own adapter is the best of all 5 on its split: no (medical is)" in checks


def test_cut_harm_and_base_targets():
    res = results({"scottish": 0.5, "caribbean": 0.6, "indian": 0.55, "german": 0.72, "medical": 0.4}, other=0.9,
                  base_each=0.23)
    checks = report.make_checks(res)
    assert "scottish adapter cuts WER by 38% relative (target >= 30%): met" in checks
    assert "german adapter cuts WER by 10% relative (target >= 30%): NOT met" in checks
    assert "medical adapter changes base-set WER by +15% relative (target <= +10%): NOT met" in checks
    assert "base WER on the base split 20.0% (target < 15%): NOT met" in checks
    assert "base WER 25.0% vs pocketsphinx 30.0% on the flite/Festival/pico audio: met" in checks


def test_table_and_matrix_rows():
    res = results({n: 0.4 for n in NAMES}, other=0.85)
    table, each = report.make_table(res)
    assert "| scottish (accent) | 1.0 | 80.0% | 40.0% (-50% rel.) | 85.0% (best other: caribbean) | 50.0% |" in table
    assert each.startswith("scottish 21.0%, caribbean 21.0%")
    matrix = report.make_matrix(res).splitlines()
    assert matrix[0] == "| test split | no adapter | " + " | ".join(NAMES) + " |"
    assert matrix[2] == "| base | 20.0% | 21.0% | 21.0% | 21.0% | 21.0% | 21.0% |"
    assert matrix[3] == "| scottish | 80.0% | **40.0%** | 85.0% | 85.0% | 85.0% | 85.0% |"
    assert len(matrix) == 2 + 1 + len(NAMES)  # base_ffp has no adapter runs


def test_voice_families_group_variants_and_engines():
    assert report.voice_family("espeak:en-us+m7") == report.voice_family("espeak:en-us+klatt4") == "espeak-ng en-us"
    assert report.voice_family("espeak:en-us-nyc+f4") == "espeak-ng en-us-nyc"
    assert report.voice_family("espeak:mb-us1") == "mbrola (via espeak-ng)"
    assert report.voice_family("festival:kal_diphone") == "festival"
    rows = [{"voice": "espeak:en-us+m7"}, {"voice": "flite:slt"}, {"voice": "espeak:en-us+f4"}, {}]
    got = report.by_voice_family(rows, ["a b", "c d", "e f", "g h"], ["a b", "c x", "e f", ""])
    assert got == {"espeak-ng en-us": {"utterances": 2, "wer": 0.0}, "flite": {"utterances": 1, "wer": 0.5},
                   "unknown": {"utterances": 1, "wer": 1.0}}
