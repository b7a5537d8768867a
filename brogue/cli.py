"""The ``brogue`` command. Each subcommand imports what it needs, so serving never imports torch."""

from __future__ import annotations

import os

# numpy's OpenBLAS threads busy-wait after every small matrix product, and the streaming front end
# does one per chunk: one thread unless the caller chose otherwise (docs/performance.md).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from pathlib import Path  # noqa: E402
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
    model_dir: Optional[Path] = typer.Option(None, help="Exported model that Triton serves and the gateway decodes "
                                                        "(default: MODEL_REPOSITORY/exported/demo)."),
    latencies: str = typer.Option("", help="Latencies served, comma-separated names from model.json "
                                           "(default: all); only these are loaded."),
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
    from brogue.server.triton_client import ModelMismatch
    from brogue.server.tritonserver import TritonNotFound, TritonServerError

    lats = tuple(n.strip() for n in latencies.split(",") if n.strip())
    try:
        serve_gateway(model_repository, tenants=tenants, triton_urls=triton_url, model_dir=model_dir, latencies=lats,
                      listen=Listen(host, http_port, grpc_port, admin_host, admin_port, tls_cert, tls_key))
    except (ModelMismatch, ValueError, TritonNotFound, TritonServerError) as e:
        _fail(str(e))


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
def demo():
    """The demo: Triton and the gateway on the demo model and tenants (browser page on :8080)."""
    import logging

    from brogue.clients.demo import run_demo

    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run_demo(console=console.print)


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


# -- brogue adapters push|assign|list: the gateway's admin API (code in clients/admin.py) -------------

adapters_app = typer.Typer(no_args_is_help=True, help="Publish adapters and point tenants at them, "
                                                       "through a running gateway's admin API.")
app.add_typer(adapters_app, name="adapters")

_ADMIN = typer.Option("127.0.0.1:50052", "--admin", help="Admin gRPC address of the gateway.")
_TOKEN = typer.Option(None, "--token", help="Admin token (default: $BROGUE_ADMIN_TOKEN).")
_TLS_CA = typer.Option(None, "--tls-ca", help="CA or certificate (PEM) of a TLS gateway.")


def _admin_call(admin: str, token: Optional[str], tls_ca: Optional[Path], fn):
    from brogue.clients.admin import AdminClient, AdminClientError

    try:
        with AdminClient(admin, token, tls_ca) as client:
            return fn(client)
    except AdminClientError as e:
        _fail(f"{e.code}: {e}")
    except (ValueError, OSError) as e:
        _fail(str(e))


@adapters_app.command("push")
def adapters_push(
    path: Path = typer.Argument(..., help="An adapter-store entry folder, or an adapter.safetensors file."),
    name: Optional[str] = typer.Option(None, "--name", help="Adapter name (default: the entry's)."),
    version: Optional[str] = typer.Option(None, "--version", help="Version (default: the entry's, or sha-<hash>)."),
    kind: Optional[str] = typer.Option(None, "--kind", help="Free text, e.g. 'accent' or 'domain'."),
    description: Optional[str] = typer.Option(None, "--description", help="Free text."),
    base_fingerprint: Optional[str] = typer.Option(None, "--base-fingerprint",
                                                   help="Refuse unless the served model has this fingerprint."),
    domain_lm: Optional[Path] = typer.Option(None, "--domain-lm", help="Sentences (.txt/.txt.gz) for the "
                                                                        "adapter's domain LM (an entry's own goes along)."),
    domain_lm_weight: float = typer.Option(0.0, help="Its prior weight in the mix with the model's LM (0: 0.5)."),
    admin: str = _ADMIN, token: Optional[str] = _TOKEN, tls_ca: Optional[Path] = _TLS_CA,
):
    """Validate an adapter on the gateway and add it to its store as NAME@VERSION."""
    from brogue.adapters import AdapterError
    from brogue.clients.admin import push_request

    try:
        req = push_request(path, name=name, version=version, kind=kind, description=description,
                           base_fingerprint=base_fingerprint, domain_lm=domain_lm, domain_lm_weight=domain_lm_weight)
    except (AdapterError, ValueError, OSError) as e:
        _fail(str(e))
    a = _admin_call(admin, token, tls_ca, lambda c: c.publish(req))
    typer.echo(a.ref)
    console.print(f"stored {a.ref} (dim {a.dim}, {a.n_layers} layers, sha256 {a.sha256[:12]})")


@adapters_app.command("assign")
def adapters_assign(
    tenant: str = typer.Argument(..., help="Tenant name."),
    adapter: str = typer.Argument(..., help="NAME@VERSION in the store, or 'base' for the base model."),
    admin: str = _ADMIN, token: Optional[str] = _TOKEN, tls_ca: Optional[Path] = _TLS_CA,
):
    """Point TENANT at an adapter: its new streams use it, open streams keep theirs."""
    ref = "" if adapter in ("base", "") else adapter
    t = _admin_call(admin, token, tls_ca, lambda c: c.assign(tenant, ref))
    console.print(f"tenant {t.name} -> {t.adapter or 'base model'} (new streams; {t.live_streams} open stream(s) "
                  "keep their adapter)")


@adapters_app.command("list")
def adapters_list(
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    admin: str = _ADMIN, token: Optional[str] = _TOKEN, tls_ca: Optional[Path] = _TLS_CA,
):
    """List the store's adapters (validated against the served model) and the tenants."""
    import json

    from rich.table import Table

    from brogue.clients.admin import adapter_dict, tenant_dict

    adapters, tenants = _admin_call(admin, token, tls_ca, lambda c: (c.adapters(), c.tenants()))
    if as_json:
        typer.echo(json.dumps({"adapters": [adapter_dict(a) for a in adapters],
                               "tenants": [tenant_dict(t) for t in tenants]}, indent=2))
        return
    out = Console()
    table = Table("adapter", "kind", "dim", "sha256", "base", "tenants", "status", title="adapters")
    for a in adapters:
        table.add_row(a.ref, a.kind, str(a.dim or ""), a.sha256[:12], a.base_fingerprint[:12],
                      ", ".join(a.tenants), f"[red]{a.error_code}: {a.error}[/]" if a.error else "ok")
    out.print(table)
    table = Table("tenant", "adapter", "max streams", "max seconds", "live", "keys", title="tenants")
    for t in tenants:
        table.add_row(t.name, t.adapter or "(base model)", str(t.max_streams), f"{t.max_stream_seconds:g}",
                      str(t.live_streams), str(t.api_keys))
    out.print(table)


@app.command()
def adapt(
    model: Path = typer.Option(..., "--model", "-m", help="Base .nemo model (frozen)."),
    train: Path = typer.Option(..., "--train", help="NeMo manifest of the tenant's speech (relative audio "
                                                   "paths: from the manifest's folder)."),
    name: str = typer.Option(..., "--name", help="Adapter name in the store."),
    dim: int = typer.Option(32, help="Adapter bottleneck dim."),
    steps: int = typer.Option(150, help="Optimiser steps."),
    batch_size: int = typer.Option(16),
    lr: float = typer.Option(3e-3),
    store: Path = typer.Option(DEFAULT_MODEL_REPO / "adapters", help="Adapter store folder."),
    version: str = typer.Option("v1", help="Version label."),
    kind: str = typer.Option("", help="Free text, e.g. 'accent' or 'domain'."),
    description: str = typer.Option("", help="Free text."),
    accelerator: str = typer.Option("cpu", help="Lightning accelerator: cpu or gpu."),
    replay: Optional[Path] = typer.Option(None, help="Manifest of general speech (e.g. the base model's training "
                                                     "set) mixed into training, so the adapter does not drift "
                                                     "on other speakers."),
    replay_fraction: float = typer.Option(0.25, help="Share of the training rows drawn from --replay."),
    replay_loss: str = typer.Option("ctc", help="On the --replay rows: 'ctc' (learn their transcripts) or "
                                                "'distill' (keep the base model's output on them)."),
    distill_weight: float = typer.Option(1.0, help="Weight of the distillation loss (--replay-loss distill)."),
    domain_lm: float = typer.Option(0.0, help="Store the manifest's sentences as the adapter's domain LM, "
                                              "mixed into the model's LM at this prior weight (0: none)."),
    speed_perturb: float = typer.Option(0.0, help="Play most training clips at a random speed in 1 +- this "
                                                  "(more apparent speakers; 0: off)."),
):
    """Train one tenant's LinearAdapter (base frozen) and write a validated adapter-store entry."""
    from brogue.export.adapt import train_adapter

    try:
        r = train_adapter(model, train, name, store=store, dim=dim, steps=steps, batch_size=batch_size, lr=lr,
                          version=version, kind=kind, description=description, accelerator=accelerator,
                          replay=replay, replay_fraction=replay_fraction, domain_lm=domain_lm,
                          speed_perturb=speed_perturb, replay_loss=replay_loss, distill_weight=distill_weight)
    except (FileNotFoundError, ValueError, FileExistsError) as e:
        _fail(str(e))
    console.print(f"trained {r.steps} steps on {r.train_hours * 60:.1f} min of audio in {r.seconds:.0f} s "
                  f"(loss {r.first_loss:.2f} -> {r.last_loss:.2f}, peak RSS {r.peak_rss_mb} MB)")
    console.print(f"stored {r.manifest.name}@{r.manifest.version} in {r.entry}")
    typer.echo(f"{r.manifest.name}@{r.manifest.version}")


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


@app.command("eval")
def eval_cmd(
    manifest: Path = typer.Argument(..., help="NeMo manifest (relative audio paths: from its folder)."),
    adapter: Optional[str] = typer.Option(None, "--adapter", help="NAME@VERSION (or NAME for its only/latest "
                                                                   "version) from the store."),
    model_dir: Path = typer.Option(DEFAULT_MODEL_REPO / "exported" / "demo", help="Exported model folder."),
    store: Path = typer.Option(DEFAULT_MODEL_REPO / "adapters", help="Adapter store folder."),
    batch: int = typer.Option(16, help="Streams run together."),
    limit: Optional[int] = typer.Option(None, help="Only the first N utterances."),
    show: int = typer.Option(0, help="Print the first N hypotheses."),
    decoder: str = typer.Option("auto", help="auto (LM beam search when the model has an LM), greedy, or lm."),
):
    """Stream a manifest chunk by chunk through the exported model; last line: WER=<%> CER=<%>."""
    from brogue.clients.eval import EvalError, evaluate

    try:
        r = evaluate(manifest, model_dir=model_dir, adapter=adapter, store=store, batch=batch, limit=limit,
                     decoder=decoder)
    except EvalError as e:
        _fail(str(e))
    for ref, hyp in list(zip(r.refs, r.hyps))[:show]:
        typer.echo(f"REF: {ref}\nHYP: {hyp}")
    typer.echo(f"{r.n} utterances, {r.hours * 60:.1f} min of audio, {r.seconds:.1f} s "
               f"({r.hours * 3600 / max(r.seconds, 1e-9):.0f}x real time), adapter {r.adapter or 'none'}, "
               f"decoder {r.decoder}")
    typer.echo(f"WER={r.wer * 100:.2f} CER={r.cer * 100:.2f}")


def _clips_default() -> Path:
    return REPO / "tests" / "data" / "demo" / "manifest.json"


@app.command()
def bench(
    model_repository: Path = typer.Option(DEFAULT_MODEL_REPO, help="Model repository to copy and serve."),
    model: str = typer.Option("demo", help="Exported model in MODEL_REPOSITORY/exported/."),
    clips: Path = typer.Option(None, help="NeMo manifest of the clips to stream (default: the test clips)."),
    out: Path = typer.Option(Path("bench-results"), help="Folder for bench.json, bench.md and the plots."),
    level_seconds: float = typer.Option(30.0, help="Seconds of load per level."),
    target_ms: Optional[float] = typer.Option(None, help="p95 end-of-speech-to-final target (default chunk + 100 ms)."),
    limit: int = typer.Option(256, help="Most streams to try."),
    levels: str = typer.Option("1,8,32", help="Levels always measured, besides the capacity search."),
    compare_streams: int = typer.Option(8, help="Streams at a time in the throughput comparisons."),
    nemo: Optional[Path] = typer.Option(None, help="The model's .nemo, to compare with NeMo's PyTorch streaming "
                                                   "(default: MODEL_REPOSITORY/MODEL.nemo if present)."),
    jitter_ms: float = typer.Option(20.0, help="Network jitter added to each audio frame's send time."),
    spread_s: float = typer.Option(2.0, help="Callers start within this many seconds."),
    apis: str = typer.Option("ws,riva", help="APIs the callers use, in turn."),
    decoder: str = typer.Option("auto", help="asr_streaming's DECODER: auto (the model's LM if any), greedy or lm. "
                                             "NeMo and sherpa-onnx are compared with greedy decoding only."),
    rounds: int = typer.Option(3, help="Interleaved rounds of the comparisons (ratios: their median and range)."),
    sherpa: bool = typer.Option(True, help="Compare with sherpa-onnx's engine (CTC models; exports the .nemo)."),
    capacity_search: bool = typer.Option(True, help="Search the capacity (off: the fixed levels and comparisons)."),
):
    """Capacity, latency percentiles and side-by-side throughput ratios through a real Triton + gateway."""
    from brogue.bench.report import ratio_text
    from brogue.bench.run import run_bench

    repo = model_repository
    nemo = nemo or (repo / f"{model}.nemo")
    result = run_bench(repo, clips or _clips_default(), out, model=model, level_seconds=level_seconds,
                       target_ms=target_ms, limit=limit, fixed=tuple(int(x) for x in levels.split(",") if x),
                       compare_streams=compare_streams, nemo=nemo if nemo.is_file() else None,
                       jitter_ms=jitter_ms, spread_s=spread_s, apis=tuple(apis.split(",")), decoder=decoder,
                       rounds=rounds, sherpa=sherpa and nemo.is_file(), capacity_search=capacity_search,
                       log=lambda m: console.print(m, highlight=False))
    typer.echo((out / "bench.md").read_text())
    for k, v in result["ratios"].items():
        typer.echo(f"ratio {k}={ratio_text(v)}")
    if result["capacity"] is not None:
        typer.echo(f"capacity streams={result['capacity']} per_core={result['capacity_per_core']}")


def _fault_stack(model_repository: Path, model: str, workdir: Path, owned_triton: bool = False, decoder: str = "auto"):
    from brogue.bench.stack import Stack

    return Stack(model_repository, workdir, model=model, owned_triton=owned_triton, decoder=decoder)


@app.command()
def faults(
    only: list[str] = typer.Option([], help="Scenario(s) to run (default: all but the long one): triton_restart, "
                                            "gateway_restart, gateway_crash, adapter_publish, slow_client; and "
                                            "supervised_triton (brogue serve's own Triton killed every --every s "
                                            "for --minutes)."),
    model_repository: Path = typer.Option(DEFAULT_MODEL_REPO),
    model: str = typer.Option("demo"),
    clips: Path = typer.Option(None, help="NeMo manifest of the clips (default: the test clips)."),
    streams: int = typer.Option(8, help="Callers under load during each fault."),
    out: Path = typer.Option(Path("bench-results") / "faults.json"),
    minutes: float = typer.Option(30.0, help="supervised_triton: how long."),
    every: float = typer.Option(300.0, help="supervised_triton: seconds between kills."),
):
    """Fault scripts under load: Triton killed, gateway restarted, adapters published, a slow client."""
    import json
    import tempfile

    from brogue.bench.faults import LONG_SCENARIOS, SCENARIOS
    from brogue.bench.run import load_clips

    names = only or list(SCENARIOS)
    unknown = set(names) - set(SCENARIOS) - set(LONG_SCENARIOS)
    if unknown:
        _fail(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    clip_list = load_clips(clips or _clips_default())
    results = []
    for name in names:
        with tempfile.TemporaryDirectory(prefix="brogue-faults-") as tmp:
            with _fault_stack(model_repository, model, Path(tmp), owned_triton=name in LONG_SCENARIOS) as stack:
                console.print(f"{name}: running", highlight=False)
                kw = {} if name == "slow_client" else {"n": streams}
                if name in LONG_SCENARIOS:
                    kw.update(minutes=minutes, every_s=every)
                r = {**SCENARIOS, **LONG_SCENARIOS}[name](stack, clip_list, **kw)
                results.append(r)
                console.print(f"{name}: {'ok' if r['ok'] else 'FAILED'} {json.dumps(r)}", highlight=False)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")
    for r in results:
        typer.echo(f"{r['scenario']}: {'ok' if r['ok'] else 'FAILED'} streams={r['streams']} errors={r['errors']}")
    if not all(r["ok"] for r in results):
        raise typer.Exit(1)


@app.command()
def soak(
    minutes: float = typer.Option(30.0),
    streams: int = typer.Option(..., help="Concurrent callers (e.g. 70% of `brogue bench`'s capacity)."),
    model_repository: Path = typer.Option(DEFAULT_MODEL_REPO),
    model: str = typer.Option("demo"),
    clips: Path = typer.Option(None, help="NeMo manifest of the clips (default: the test clips)."),
    out: Path = typer.Option(Path("bench-results") / "soak.json"),
    decoder: str = typer.Option("auto", help="asr_streaming's DECODER: auto (the model's LM if any), greedy or lm."),
):
    """A long fixed load: errors, RSS, live streams and Triton sequences sampled throughout."""
    import json
    import tempfile

    from brogue.bench.faults import soak as run_soak
    from brogue.bench.run import load_clips

    clip_list = load_clips(clips or _clips_default())
    with tempfile.TemporaryDirectory(prefix="brogue-soak-") as tmp:
        with _fault_stack(model_repository, model, Path(tmp), decoder=decoder) as stack:
            r = run_soak(stack, clip_list, streams, minutes, log=lambda m: console.print(m, highlight=False))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(r, indent=1) + "\n")
    typer.echo(f"soak: {'ok' if r['ok'] else 'FAILED'} minutes={minutes:g} callers={streams} streams={r['streams']} "
               f"errors={r['errors']} rss_after_1_min={r['rss_after_1_min']} rss_end={r['rss_end']} "
               f"rss_slope_mb_per_hour={r['rss_slope_mb_per_hour']} live_range={r['live_range']} "
               f"after_load={r['after_load']}")
    if not r["ok"]:
        raise typer.Exit(1)


if __name__ == "__main__":
    app()
