"""``brogue triton``, ``brogue serve`` and ``brogue demo``: the servers."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .common import DEFAULT_MODEL_REPO, _fail, app, console


@app.command()
def triton(
    model_repository: Path = typer.Option(DEFAULT_MODEL_REPO, help="Triton model repository."),
    model: list[str] = typer.Option(["asr_streaming"], help="Models to load."),
    grpc_port: int = typer.Option(8001),
    http_port: int = typer.Option(8000),
    metrics_port: int = typer.Option(8002),
    timeout: float = typer.Option(120.0, help="Seconds to wait for the models to be ready."),
):
    """Run the tritonserver bundled with nvidia-pytriton on this repository (CPU hosts), and print
    the equivalent `docker run` of NVIDIA's Triton container for GPU hosts."""
    from brogue.server.triton_bundle import TritonNotFound
    from brogue.server.tritonserver import TritonServerError, serve_forever

    try:
        serve_forever(model_repository, timeout=timeout, models=tuple(model), grpc_port=grpc_port,
                      http_port=http_port, metrics_port=metrics_port)
    except (TritonNotFound, TritonServerError) as e:
        _fail(str(e))


@app.command()
def serve(
    model_repository: Path = typer.Option(DEFAULT_MODEL_REPO, help="Triton model repository."),
    tenants: Path = typer.Option(DEFAULT_MODEL_REPO / "tenants.toml", help="Tenants file (TOML)."),
    triton_url: list[str] = typer.Option([], help="Use running Triton instance(s) (host:port, repeatable) "
                                                  "instead of starting the bundled one."),
    model_dir: Optional[Path] = typer.Option(None, help="Exported model that Triton serves and the gateway decodes "
                                                        "(default: MODEL_REPOSITORY/exported/demo)."),
    latencies: str = typer.Option("", help="Latencies served, comma-separated names from model.json "
                                           "(default: all); only these are loaded."),
    host: str = typer.Option("127.0.0.1", help="Address of the public ports."),
    http_port: int = typer.Option(8080, help="WebSocket /v1/stream, browser page, /metrics, OpenAI API."),
    grpc_port: int = typer.Option(50051, help="Riva-compatible gRPC and health."),
    admin_host: str = typer.Option("127.0.0.1", help="Address of the admin gRPC port (loopback by default)."),
    admin_port: int = typer.Option(50052, help="Admin gRPC."),
    tls_cert: Optional[Path] = typer.Option(None, help="PEM certificate: serve TLS on every port."),
    tls_key: Optional[Path] = typer.Option(None, help="PEM private key of --tls-cert."),
    idle_seconds: float = typer.Option(30.0, min=0.1, help="WebSocket: a stream with no message for this long "
                                                           "ends with error 'idle'."),
    send_timeout: float = typer.Option(10.0, min=0.1, help="WebSocket: a client that reads no result for this "
                                                           "long is dropped ('slow_client')."),
    keepalive_seconds: float = typer.Option(20.0, min=0.1, help="WebSocket ping interval, and how long a pong may "
                                                                "take before the client is dropped."),
    max_upload_mb: float = typer.Option(200.0, min=0.001, help="OpenAI API: the largest audio file accepted, in MB "
                                                               "(10^6 bytes); larger uploads get 413."),
    memory_budget_mb: Optional[float] = typer.Option(None, min=1.0, help="Memory per Triton instance for the model "
                                                     "versions it serves, in MiB (default: 3/4 of this host's memory "
                                                     "with the bundled Triton, no limit with --triton-url)."),
    triton_repository: Optional[Path] = typer.Option(None, help="Where the --triton-url instances see the model "
                                                                "repository (default: the same path)."),
    model_config_name: str = typer.Option("", help="The --model-config-name of the --triton-url instances (e.g. gpu): "
                                                   "model versions are loaded with asr_streaming/configs/NAME.pbtxt."),
    log_level: str = typer.Option("INFO"),
):
    """Start Triton (bundled, or --triton-url) and the gateway: WebSocket, Riva gRPC, admin, metrics."""
    import logging

    from brogue.server.app import Listen, serve as serve_gateway
    from brogue.server.openai import UploadLimits
    from brogue.server.websocket import ConnectionLimits

    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from brogue.server.triton_client import ModelMismatch
    from brogue.server.triton_bundle import TritonNotFound
    from brogue.server.tritonserver import TritonServerError

    lats = tuple(n.strip() for n in latencies.split(",") if n.strip())
    try:
        serve_gateway(model_repository, tenants=tenants, triton_urls=triton_url, model_dir=model_dir, latencies=lats,
                      listen=Listen(host, http_port, grpc_port, admin_host, admin_port, tls_cert, tls_key),
                      limits=ConnectionLimits(idle_seconds=idle_seconds, send_seconds=send_timeout,
                                              keepalive_seconds=keepalive_seconds),
                      upload_limits=UploadLimits(max_file_bytes=int(max_upload_mb * 1e6)),
                      memory_budget=int(memory_budget_mb * (1 << 20)) if memory_budget_mb else None,
                      triton_repository=triton_repository, model_config_name=model_config_name)
    except (ModelMismatch, ValueError, TritonNotFound, TritonServerError) as e:
        _fail(str(e))


@app.command()
def demo():
    """The demo: Triton and the gateway on the demo model and tenants (browser page on :8080)."""
    import logging

    from brogue.clients.demo import run_demo

    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run_demo(console=console.print)
