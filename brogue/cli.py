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
def demo(audio: Optional[Path] = typer.Argument(None, help="A 16 kHz WAV to stream (default: a test signal).")):
    """Start Triton on the demo model and stream audio through the base model and an adapter."""
    from brogue.clients.demo import run_demo

    run_demo(audio, console=console.print)


if __name__ == "__main__":
    app()
