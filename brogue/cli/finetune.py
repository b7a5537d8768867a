"""``brogue finetune``: a full fine-tune of a base model, exported and published as a model version."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from .adapters import _TLS_CA, _admin_call
from .common import (DEFAULT_MODEL_REPO, DISTILL_WEIGHT, REPLAY, REPLAY_FRACTION, REPLAY_LOSS, SPEED_PERTURB, _fail,
                     app, console)


@app.command()
def finetune(
    model: Path = typer.Option(..., "--model", "-m", help="Base .nemo model."),
    train: Path = typer.Option(..., "--train", help="NeMo manifest of the speech to fine-tune on (relative audio "
                                                   "paths: from the manifest's folder)."),
    name: str = typer.Option(..., "--name", help="Model name in the store (a-z, 0-9, and . _ - after the first)."),
    version: str = typer.Option("v1", help="Version label (entries are immutable)."),
    steps: int = typer.Option(150, help="Optimiser steps."),
    batch_size: int = typer.Option(16),
    lr: float = typer.Option(1e-4, help="Peak learning rate (every weight trains: far below an adapter's)."),
    warmup: int = typer.Option(15, help="Warmup steps (at most a fifth of --steps)."),
    max_duration: float = typer.Option(16.0, help="Skip clips longer than this (seconds)."),
    replay: Optional[Path] = REPLAY,
    replay_fraction: float = REPLAY_FRACTION,
    replay_loss: str = REPLAY_LOSS,
    distill_weight: float = DISTILL_WEIGHT,
    speed_perturb: float = SPEED_PERTURB,
    freeze: Optional[List[str]] = typer.Option(None, "--freeze", help="Keep the weights whose name starts with "
                                                                      "this fixed too (repeatable), e.g. "
                                                                      "encoder.pre_encode."),
    head: Optional[str] = typer.Option(None, help="Head to export of a hybrid model: ctc or rnnt."),
    max_adapter_dim: int = typer.Option(64, help="Adapter bank dim of the export (adapters trained on it)."),
    out_nemo: Optional[Path] = typer.Option(None, "--out-nemo", help="Where to write the fine-tuned .nemo "
                                                                     "(default: NAME-VERSION.nemo here)."),
    export_dir: Optional[Path] = typer.Option(None, "--export-dir", help="Where to export it (default: the "
                                                                         ".nemo's path without .nemo)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out-nemo and --export-dir."),
    model_repository: Path = typer.Option(DEFAULT_MODEL_REPO, "--model-repository",
                                          help="Publish into MODEL_REPOSITORY/models (without --admin)."),
    admin: Optional[str] = typer.Option(None, "--admin", help="Publish through this gateway's admin API "
                                                              "(HOST:PORT) instead."),
    token: Optional[str] = typer.Option(None, "--token", help="Admin token (default: $BROGUE_ADMIN_TOKEN)."),
    tls_ca: Optional[Path] = _TLS_CA,
    rollout: bool = typer.Option(True, "--rollout/--no-rollout", help="With --admin: move the tenants on other "
                                                                       "versions of NAME to this one."),
    publish: bool = typer.Option(True, "--publish/--no-publish", help="Publish the export (or only write it)."),
    description: str = typer.Option("", help="Free text (default: what was trained, on what)."),
    accelerator: str = typer.Option("cpu", help="Lightning accelerator: cpu or gpu."),
    threads: Optional[int] = typer.Option(None, help="Torch threads (default: torch's)."),
    seed: int = typer.Option(0, help="Random seed (replay draw, shuffling, augmentation)."),
):
    """Fine-tune every weight of a base model, export it and publish it as NAME@VERSION (kind 'full')."""
    from brogue.export.finetune import finetune as run
    from brogue.export.nemo_model import ExportError
    from brogue.models import ModelError, ModelRef, ModelStore

    try:
        ref = ModelRef(name, version)
    except ValueError as e:
        _fail(str(e))
    out_nemo = out_nemo or Path(f"{name}-{version}.nemo")
    export_dir = export_dir or out_nemo.with_suffix("")
    if export_dir == out_nemo:
        _fail(f"--export-dir {export_dir} is the .nemo file's path")
    store = model_repository / "models" if publish and admin is None else None
    if publish and admin is not None:  # reach the gateway, and refuse a taken name@version, before training
        listed = _admin_call(admin, token, tls_ca, lambda c: c.models())
        if any(m.ref == str(ref) for m in listed.models):
            _fail(f"model {ref} is already in the gateway's store; entries are immutable, publish a new version")
    try:
        r = run(model, train, name, out_nemo=out_nemo, export_dir=export_dir, store=store, version=version,
                steps=steps, batch_size=batch_size, lr=lr, warmup=warmup, max_duration=max_duration, replay=replay,
                replay_fraction=replay_fraction, replay_loss=replay_loss, distill_weight=distill_weight,
                speed_perturb=speed_perturb, freeze=tuple(freeze or ()), head=head,
                max_adapter_dim=max_adapter_dim, threads=threads, seed=seed, accelerator=accelerator,
                overwrite=overwrite, description=description)
    except ModelError as e:
        _fail(f"{e.code}: {e}")
    except (FileNotFoundError, ValueError, FileExistsError, ExportError) as e:
        _fail(str(e))
    console.print(f"trained {r.steps} steps on {r.train_hours * 60:.1f} min of audio in {r.seconds:.0f} s "
                  f"(loss {r.first_loss:.2f} -> {r.last_loss:.2f}, {r.trainable} parameters, "
                  f"peak RSS {r.peak_rss_mb} MB)")
    console.print(f"wrote {r.nemo} and its export {r.export_dir} (fingerprint {r.fingerprint[:19]}...)")
    if r.manifest is not None:
        console.print(f"stored {r.manifest.ref} in {ModelStore(store).path(r.manifest.ref)} "
                      f"({r.manifest.size_bytes / 2**20:.1f} MiB)")
    elif admin is not None and publish:
        p = _admin_call(admin, token, tls_ca, lambda c: c.publish_model(
            r.export_dir, name, version, kind="full", description=r.description,
            parent_fingerprint=r.parent_fingerprint, source=r.source, rollout=rollout))
        moved = f"; tenants moved: {', '.join(p.moved_tenants)}" if p.moved_tenants else ""
        console.print(f"stored {p.model.ref} through {admin} ({p.model.size_bytes / 2**20:.1f} MiB on disk, "
                      f"{p.model.serving_bytes / 2**20:.1f} MiB to serve){moved}")
    else:
        console.print("not published (--no-publish)")
        typer.echo(str(r.export_dir))
        return
    typer.echo(str(ref))
