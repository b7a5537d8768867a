"""The ``brogue`` command. Each subcommand imports what it needs, so serving never imports torch."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Brogue: multi-tenant streaming ASR.")
console = Console(stderr=True)

REPO = Path(__file__).resolve().parent.parent
DEFAULT_MODEL_REPO = REPO / "model_repo"


def _fail(message: str) -> None:
    console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(2)


@app.command()
def export(
    model: Path = typer.Argument(..., help="NeMo .nemo checkpoint (cache-aware streaming FastConformer)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder, e.g. model_repo/asr_streaming/demo."),
    head: Optional[str] = typer.Option(None, help="For hybrid models: serve the 'ctc' or 'rnnt' head."),
    max_adapter_dim: int = typer.Option(64, help="Largest adapter dim the bank accepts (smaller ones are padded)."),
    name: Optional[str] = typer.Option(None, help="Model name recorded in model.json (default: folder name)."),
    tensorrt: bool = typer.Option(False, "--tensorrt", help="Also build TensorRT plans (GPU hosts only)."),
    trt_max_batch: int = typer.Option(64, help="TensorRT profile: largest batch."),
    trt_slots: int = typer.Option(16, help="TensorRT profile: bank slots."),
    fp16: bool = typer.Option(False, help="TensorRT: allow fp16 kernels."),
):
    """Export a .nemo model to ONNX graphs (+ adapter bank inputs) and model.json."""
    from brogue.export.nemo_export import ExportError, export_model

    try:
        meta = export_model(model, out, head=head, max_adapter_dim=max_adapter_dim, name=name)
    except ExportError as e:
        _fail(str(e))
    console.print(f"exported {meta['source']['nemo_class']} ({meta['head']} head) to {out} "
                  f"in {meta['export_seconds']} s: {', '.join(meta['files'])}")
    console.print(f"checks: {meta['checks']}")
    if tensorrt:
        from brogue.export.tensorrt import TensorRTUnavailable, build_plans

        try:
            plans = build_plans(out, max_batch=trt_max_batch, slots=trt_slots, fp16=fp16)
        except TensorRTUnavailable as e:
            _fail(f"TensorRT plan not built: {e}")
        console.print(f"TensorRT plans: {', '.join(p.name for p in plans)}")


@app.command("export-adapter")
def export_adapter_cmd(
    adapter: Optional[Path] = typer.Argument(None, help="NeMo save_adapters file (.pt). Omit to take the "
                                                       "adapter from --model itself."),
    model: Path = typer.Option(..., "--model", "-m", help="The base .nemo model the adapter was trained on."),
    store: Path = typer.Option(DEFAULT_MODEL_REPO / "adapters", help="Adapter store folder."),
    name: Optional[str] = typer.Option(None, help="Store name (default: the adapter's own name)."),
    select: Optional[str] = typer.Option(None, "--adapter", help="Which adapter, when the source holds several."),
    version: Optional[str] = typer.Option(None, help="Version label (default: sha-<content hash>)."),
    kind: str = typer.Option("", help="Free text, e.g. 'accent' or 'domain'."),
    description: str = typer.Option("", help="Free text."),
):
    """Convert a NeMo encoder LinearAdapter into a validated adapter-store entry."""
    from brogue.adapters import AdapterError
    from brogue.export.adapter import export_adapter

    try:
        m = export_adapter(adapter, model=model, store=store, name=name, adapter=select, version=version,
                           kind=kind, description=description)
    except (AdapterError, FileExistsError, ValueError) as e:
        _fail(str(e))
    typer.echo(f"{m.name}@{m.version}")
    console.print(f"stored {m.name}@{m.version} (dim {m.dim}, {m.n_layers} layers, sha256 {m.sha256[:12]}) "
                  f"in {store}")


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
    from brogue.server.tritonserver import TritonNotFound, TritonServerError, serve_forever

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
    model_dir: Optional[Path] = typer.Option(None, help="Exported model (default: MODEL_REPOSITORY/exported/demo)."),
    host: str = typer.Option("127.0.0.1", help="Address of the public ports."),
    http_port: int = typer.Option(8080, help="WebSocket /v1/stream, browser page, /metrics."),
    grpc_port: int = typer.Option(50051, help="Riva-compatible gRPC and health."),
    admin_host: str = typer.Option("127.0.0.1", help="Address of the admin gRPC port (loopback by default)."),
    admin_port: int = typer.Option(50052, help="Admin gRPC."),
    tls_cert: Optional[Path] = typer.Option(None, help="PEM certificate: serve TLS on every port."),
    tls_key: Optional[Path] = typer.Option(None, help="PEM private key of --tls-cert."),
    log_level: str = typer.Option("INFO"),
):
    """Start Triton (bundled, or --triton-url) and the gateway: WebSocket, Riva gRPC, admin, metrics."""
    import logging

    from brogue.server.app import Listen, serve as serve_gateway

    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    serve_gateway(model_repository, tenants=tenants, triton_urls=triton_url, model_dir=model_dir,
                  listen=Listen(host, http_port, grpc_port, admin_host, admin_port, tls_cert, tls_key))


@app.command()
def demo(audio: Optional[Path] = typer.Argument(None, help="A 16 kHz WAV to stream (default: a test signal).")):
    """Start Triton on the demo model and stream audio through the base model and an adapter."""
    from brogue.clients.demo import run_demo

    run_demo(audio, console=console.print)


def _recipe(name: str):
    """Import ``recipes/NAME.py`` (the demo model's recipe lives beside the package, not in it)."""
    import importlib.util

    path = REPO / "recipes" / f"{name}.py"
    if not path.exists():
        _fail(f"{path} not found: the recipes ship with the source tree")
    import sys

    spec = importlib.util.spec_from_file_location(f"brogue_recipe_{name}", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # so that worker processes can unpickle its functions
    spec.loader.exec_module(mod)
    return mod


@app.command()
def corpus(
    out: Path = typer.Option(..., "--out", help="Data folder (outside the repo, e.g. /work/data)."),
    seed: int = typer.Option(0, help="Random seed (sentences, voices, speeds)."),
    workers: int = typer.Option(2, help="Parallel synthesis workers."),
    scale: float = typer.Option(1.0, help="Multiply every set's size (e.g. 0.1 for a quick try)."),
):
    """Synthesise the demo corpus (installs its apt packages): base, accent, medical sets + test splits."""
    summary = _recipe("corpus").build(out, seed=seed, workers=workers, scale=scale, log=console.print)
    hours = sum(v["hours"] for k, v in summary.items() if not k.startswith("_"))
    console.print(f"corpus in {out}: {hours:.2f} h in all")


if __name__ == "__main__":
    app()
