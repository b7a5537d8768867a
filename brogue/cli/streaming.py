"""``brogue mic`` and ``brogue transcribe``: clients of a running gateway."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .common import _fail, app, console


@app.command()
def mic(
    api_key: str = typer.Option(..., "--api-key", envvar="BROGUE_API_KEY", help="Your tenant API key."),
    url: str = typer.Option("ws://127.0.0.1:8080/v1/stream", help="Gateway WebSocket URL."),
    file: Optional[Path] = typer.Option(None, help="Stream this audio file in real time instead of the microphone."),
    rate: int = typer.Option(16000, help="Microphone sample rate."),
):
    """Stream the microphone (or --file) and print partials and finals as they come."""
    from brogue.clients.mic import run_mic

    run_mic(url, api_key, file=file, rate=rate)


@app.command()
def transcribe(
    files: list[Path] = typer.Argument(..., exists=True, dir_okay=False, help="Audio files (WAV, FLAC, OGG...)."),
    stream: bool = typer.Option(False, "--stream", help="StreamingRecognize in 100 ms pieces instead of Recognize."),
    format: str = typer.Option("text", "--format", "-f", help="text, json or srt."),
    concurrency: int = typer.Option(4, help="Files in flight at once."),
    server: str = typer.Option("127.0.0.1:50051", help="Riva-compatible gRPC address (Brogue or Riva)."),
    api_key: Optional[str] = typer.Option(None, envvar="BROGUE_API_KEY", help="Tenant API key (x-api-key)."),
    out: Optional[Path] = typer.Option(None, help="Write NAME.txt/.json/.srt here (default: stdout)."),
    latency: str = typer.Option("", help="Latency name of the model (Riva's `model` field)."),
    ssl_root_cert: Optional[Path] = typer.Option(None, help="CA certificate: connect with TLS."),
):
    """Transcribe files over Riva-compatible gRPC (nvidia-riva-client), with a progress bar."""
    from brogue.clients.transcribe import transcribe_files

    try:
        done = transcribe_files(files, server=server, api_key=api_key, stream=stream, fmt=format,
                                concurrency=concurrency, out=out, latency=latency, ssl_root_cert=ssl_root_cert,
                                console=console)
    except ValueError as e:
        _fail(str(e))
    failed = [t for t in done if t.error]
    if failed:
        _fail(f"{len(failed)} of {len(done)} file(s) failed")
