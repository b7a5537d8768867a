"""``brogue transcribe``: batch transcription of files over Riva-compatible gRPC.

Uses NVIDIA's ``nvidia-riva-client`` Python API unchanged (:class:`riva.client.ASRService`), so it
works against Brogue's gateway and against a Riva server alike: ``Recognize`` on the whole file, or
``StreamingRecognize`` in 100 ms pieces with ``stream=True``. A mono 16-bit PCM WAV at a supported
rate is sent as it is (the server reads its header); anything else soundfile can read (FLAC, OGG,
stereo or 24-bit WAV...) is decoded here, downmixed to mono and sent as 16 kHz LINEAR_PCM.

Output per file: ``text`` (the finals joined), ``json`` (results with words) or ``srt`` (cues of at
most 10 words or 5 s, from the word time offsets).
"""

from __future__ import annotations

import io
import json
import wave
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

RATES = (8000, 16000, 22050, 44100, 48000)
FORMATS = {"text": ".txt", "json": ".json", "srt": ".srt"}


@dataclass
class Transcript:
    file: Path
    results: list = field(default_factory=list)  # [{"transcript", "confidence", "words": [...]}]
    error: str | None = None

    @property
    def text(self) -> str:
        return " ".join(r["transcript"].strip() for r in self.results if r["transcript"].strip())


def load_audio(path: Path) -> tuple[bytes, int, bool]:
    """(bytes to send, sample rate, whether the bytes are a WAV file)."""
    data = path.read_bytes()
    try:
        with wave.open(io.BytesIO(data)) as w:
            if w.getnchannels() == 1 and w.getsampwidth() == 2 and w.getframerate() in RATES:
                return data, w.getframerate(), True
    except (wave.Error, EOFError):
        pass
    import numpy as np
    import soundfile as sf
    import soxr

    try:
        x, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except Exception as e:  # noqa: BLE001 - soundfile raises several kinds
        raise ValueError(f"cannot read audio: {e}") from None
    x = x.mean(axis=1)
    if rate != 16000:
        x, rate = soxr.resample(x, rate, 16000), 16000
    return (np.clip(x, -1, 1) * 32767).astype("<i2").tobytes(), rate, False


def _result(r) -> dict:
    alt = r.alternatives[0] if r.alternatives else None
    return {"transcript": alt.transcript if alt else "", "confidence": round(alt.confidence, 4) if alt else 0.0,
            "words": [{"word": w.word, "start_ms": w.start_time, "end_ms": w.end_time,
                       "confidence": round(w.confidence, 4)} for w in (alt.words if alt else [])]}


def transcribe_one(asr, path: Path, *, stream: bool, latency: str = "") -> Transcript:
    import grpc
    import riva.client

    out = Transcript(path)
    try:
        audio, rate, _ = load_audio(path)
        config = riva.client.RecognitionConfig(
            encoding=riva.client.AudioEncoding.LINEAR_PCM, sample_rate_hertz=rate, language_code="en-US",
            max_alternatives=1, enable_word_time_offsets=True, audio_channel_count=1, model=latency)
        if not stream:
            out.results = [_result(r) for r in asr.offline_recognize(audio, config).results]
            return out
        step = rate // 10 * 2
        chunks = (audio[i:i + step] for i in range(0, len(audio), step))
        sc = riva.client.StreamingRecognitionConfig(config=config, interim_results=False)
        for resp in asr.streaming_response_generator(chunks, sc):
            out.results += [_result(r) for r in resp.results if r.is_final]
    except grpc.RpcError as e:
        out.error = f"{e.code().name}: {e.details()}"
    except (OSError, ValueError) as e:
        out.error = str(e)
    return out


def _ts(ms: int) -> str:
    h, ms = divmod(int(ms), 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d},{ms:03d}"


def to_srt(t: Transcript, max_words: int = 10, max_ms: int = 5000) -> str:
    cues, cue = [], []
    for r in t.results:
        for w in r["words"]:
            if cue and (len(cue) >= max_words or w["end_ms"] - cue[0]["start_ms"] > max_ms):
                cues.append(cue)
                cue = []
            cue.append(w)
        if cue:
            cues.append(cue)
            cue = []
    return "".join(f"{i}\n{_ts(c[0]['start_ms'])} --> {_ts(c[-1]['end_ms'])}\n{' '.join(w['word'] for w in c)}\n\n"
                   for i, c in enumerate(cues, 1))


def render(t: Transcript, fmt: str) -> str:
    if fmt == "json":
        return json.dumps({"file": str(t.file), "transcript": t.text, "results": t.results}, indent=2) + "\n"
    if fmt == "srt":
        return to_srt(t)
    return t.text + "\n"


def transcribe_files(files, *, server: str = "127.0.0.1:50051", api_key: str | None = None, stream: bool = False,
                     fmt: str = "text", concurrency: int = 4, out: Path | None = None, latency: str = "",
                     ssl_root_cert: Path | None = None, console=None) -> list[Transcript]:
    """Transcribe ``files`` with ``concurrency`` calls in flight; write ``out/NAME.{txt,json,srt}``
    (or print to stdout); return the transcripts (failed ones carry ``error``)."""
    import riva.client
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    files = [Path(f) for f in files]
    auth = riva.client.Auth(uri=server, ssl_root_cert=ssl_root_cert, use_ssl=ssl_root_cert is not None,
                            metadata_args=[["x-api-key", api_key]] if api_key else None)
    asr = riva.client.ASRService(auth)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    done: list[Transcript] = []
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=False) as progress, \
            ThreadPoolExecutor(max(1, concurrency)) as pool:
        task = progress.add_task("transcribing", total=len(files))
        futures = {pool.submit(transcribe_one, asr, f, stream=stream, latency=latency): f for f in files}
        for fut in as_completed(futures):
            t = fut.result()
            done.append(t)
            progress.advance(task)
            if t.error:
                progress.console.print(f"[red]{t.file}: {t.error}[/]")
            elif out is not None:
                (out / (t.file.stem + FORMATS[fmt])).write_text(render(t, fmt))
    if out is None:
        import sys

        for t in sorted(done, key=lambda t: files.index(t.file)):
            if not t.error:
                if len(files) > 1 and fmt != "json":
                    sys.stdout.write(f"==> {t.file} <==\n")
                sys.stdout.write(render(t, fmt))
    auth.channel.close()
    return done
