"""``brogue export``, ``brogue export-adapter`` and ``brogue lm``: a NeMo model, its adapters and its LM
into the served formats."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .common import DEFAULT_MODEL_REPO, _fail, app, console


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
    from brogue.export.nemo_export import export_model
    from brogue.export.nemo_model import ExportError

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


@app.command("lm")
def lm_cmd(
    text: list[Path] = typer.Argument(..., help="NeMo manifests (their text) or sentence files (.txt, .txt.gz)."),
    model_dir: Path = typer.Option(DEFAULT_MODEL_REPO / "exported" / "demo", help="Exported CTC model folder."),
    order: int = typer.Option(8, help="Character n-gram order."),
    alpha: float = typer.Option(1.0, help="LM weight (ignored with --dev)."),
    beta: float = typer.Option(1.5, help="Bonus per character (ignored with --dev)."),
    beam: int = typer.Option(16, help="Hypotheses kept per frame."),
    dev: Optional[Path] = typer.Option(None, help="Manifest to tune alpha and beta on (its sentences are left "
                                                  "out of the LM). Not the test split."),
    dev_limit: int = typer.Option(300, help="Utterances of --dev used."),
    refine: bool = typer.Option(True, help="With --dev: after the coarse grid, search a finer one around its best."),
    remove: bool = typer.Option(False, "--remove", help="Drop the model's LM instead (greedy decoding)."),
):
    """Give an exported CTC model a character LM for beam search (lm.txt.gz + model.json)."""
    from brogue.clients.eval import EvalError
    from brogue.export.lm import build_lm, remove_lm

    try:
        if remove:
            console.print("removed" if remove_lm(model_dir) else "the model had no LM")
            return
        r = build_lm(model_dir, text, order=order, alpha=alpha, beta=beta, beam=beam, dev=dev, dev_limit=dev_limit,
                     refine=refine, progress=lambda a, b, w: console.print(f"alpha {a:.2f} beta {b:.2f}: dev WER {w * 100:.2f}%"))
    except (FileNotFoundError, ValueError, KeyError, EvalError) as e:
        _fail(str(e))
    console.print(f"LM: {r.sentences} sentences, order {r.order}, {r.bytes / 1024:.0f} KB; alpha {r.alpha}, beta {r.beta}")
    if r.dev_wer is not None:
        console.print(f"dev WER: greedy {r.dev_greedy_wer * 100:.2f}% -> LM {r.dev_wer * 100:.2f}%")
