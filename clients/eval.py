"""``brogue eval``: word and character error rates of the exported model, streamed chunk by chunk.

Each utterance of a NeMo manifest is fed to :class:`brogue.engine.runner.StreamingRunner` in packets
of one steady chunk of audio, exactly as the server streams it (cache-aware encoder, adapter bank),
``batch`` streams at a time. Relative ``audio_filepath`` values are resolved against the manifest's
folder. WER and CER come from jiwer over the whole set, on normalised text (lowercase, only
``a-z``, ``'`` and single spaces). No torch is imported.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


class EvalError(RuntimeError):
    """The evaluation cannot run; the message says why."""


def normalise(text: str) -> str:
    t = text.lower().replace("-", " ")
    t = re.sub(r"[^a-z' ]+", " ", t)
    return re.sub(r"\s+", " ", t).strip()


@dataclass
class EvalResult:
    refs: list[str]
    hyps: list[str]
    wer: float
    cer: float
    hours: float
    seconds: float
    adapter: str | None = None
    rows: list[dict] = field(default_factory=list)
    decoder: str = "greedy"

    @property
    def n(self) -> int:
        return len(self.refs)

    def breakdown(self, key: str) -> dict[str, dict]:
        """WER and CER per value of the manifest field ``key`` (``family``, ``group``, ``voice``...):
        ``{value: {"utterances", "wer", "cer"}}``, sorted by value; rows without the field count under
        ``"-"``. Raises :class:`EvalError` when no row has the field."""
        if not any(key in r for r in self.rows):
            raise EvalError(f"no row of the manifest has a {key!r} field")
        groups: dict[str, list[int]] = {}
        for i, r in enumerate(self.rows):
            groups.setdefault(str(r.get(key, "-")), []).append(i)
        out = {}
        for value, ix in sorted(groups.items()):
            wer, cer = error_rates([self.refs[i] for i in ix], [self.hyps[i] for i in ix])
            out[value] = {"utterances": len(ix), "wer": wer, "cer": cer}
        return out


def read_manifest(path: str | Path, limit: int | None = None) -> list[dict]:
    """Rows of a NeMo manifest with ``audio_filepath`` made absolute (from the manifest's folder)."""
    path = Path(path)
    if not path.is_file():
        raise EvalError(f"{path}: no such manifest")
    rows = []
    for i, line in enumerate(open(path), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            audio = Path(row["audio_filepath"])
            row["text"]
        except (ValueError, KeyError) as e:
            raise EvalError(f"{path}:{i}: not a manifest row ({e})") from None
        row["audio_filepath"] = str(audio if audio.is_absolute() else path.parent / audio)
        rows.append(row)
        if limit and len(rows) >= limit:
            break
    if not rows:
        raise EvalError(f"{path}: empty manifest")
    return rows


def load_audio(path: str, rate: int) -> np.ndarray:
    import soundfile as sf

    try:
        audio, sr = sf.read(path, dtype="float32", always_2d=True)
    except Exception as e:
        raise EvalError(f"{path}: cannot read audio ({e})") from None
    if sr != rate:
        raise EvalError(f"{path}: {sr} Hz audio, the model takes {rate} Hz")
    return audio.mean(axis=1).astype(np.float32)


def error_rates(refs: list[str], hyps: list[str]) -> tuple[float, float]:
    import jiwer

    refs = [normalise(r) for r in refs]
    hyps = [normalise(h) for h in hyps]
    keep = [i for i, r in enumerate(refs) if r]
    refs, hyps = [refs[i] for i in keep], [hyps[i] for i in keep]
    return float(jiwer.wer(refs, hyps)), float(jiwer.cer(refs, hyps))


def make_runner(model_dir: str | Path, adapter: str | None, store: str | Path, slots: int = 2,
                decoder: str = "auto"):
    """A StreamingRunner on ``model_dir`` with ``adapter`` (NAME@VERSION or NAME) in slot 1, and
    the adapter's domain LM, if it has one, for that slot."""
    from brogue.adapters import AdapterError, BaseSpec
    from brogue.engine.runner import StreamingRunner
    from brogue.adapters.store import AdapterStore

    model_dir = Path(model_dir)
    if not (model_dir / "model.json").is_file():
        raise EvalError(f"{model_dir}: no exported model (model.json) there")
    try:
        runner = StreamingRunner(model_dir, slots=slots, decoder=decoder)
    except ValueError as e:
        raise EvalError(str(e)) from None
    ref = None
    if adapter:
        st = AdapterStore(store)
        if "@" not in adapter:
            versions = st.versions(adapter)
            if not versions:
                raise EvalError(f"no adapter named {adapter!r} in {store}")
            adapter = f"{adapter}@{versions[-1]}"
        meta = runner.meta
        try:
            w = st.load(adapter, BaseSpec(meta.fingerprint, meta.n_layers, meta.d_model, meta.max_adapter_dim))
        except (AdapterError, ValueError) as e:
            raise EvalError(str(e)) from None
        runner.bank.write(1, w.ln_weight, w.ln_bias, w.down, w.up)
        runner.slot_lm_setter(w)(1)
        ref = adapter
    return runner, ref


def transcribe(runner, audios: list[np.ndarray], slot: int, batch: int = 16, chunks: list | None = None) -> list[str]:
    """Stream ``audios`` on bank ``slot``, ``batch`` at a time; return their texts. ``chunks``: a
    list to which each utterance's per-chunk head outputs are appended, in order (the runner must
    have ``keep_outputs``)."""
    out = []
    for i in range(0, len(audios), batch):
        part = audios[i:i + batch]
        kept: dict = {j: [] for j in range(len(part))}

        def keep(res, kept=kept):
            for sid, o in res.items():
                kept[sid] += o.outputs

        states = runner.transcribe(part, [slot] * len(part), on_step=keep if chunks is not None else None)
        out += [runner.detok.decode(s.tokens) for s in states]
        if chunks is not None:
            chunks += [kept[j] for j in range(len(part))]
    return out


def evaluate(manifest, *, model_dir, adapter: str | None = None, store=None, batch: int = 16,
             limit: int | None = None, runner=None, decoder: str = "auto") -> EvalResult:
    rows = read_manifest(manifest, limit)
    if runner is None:
        runner, ref = make_runner(model_dir, adapter, store, decoder=decoder)
    else:
        ref = adapter
    rate = runner.meta.mel.sample_rate
    audios = [load_audio(r["audio_filepath"], rate) for r in rows]
    t0 = time.time()
    hyps = transcribe(runner, audios, 1 if ref else 0, batch)
    seconds = time.time() - t0
    refs = [r["text"] for r in rows]
    wer, cer = error_rates(refs, hyps)
    return EvalResult(refs=refs, hyps=hyps, wer=wer, cer=cer, hours=sum(len(a) for a in audios) / rate / 3600,
                      seconds=seconds, adapter=ref, rows=rows, decoder=runner.decoder)
