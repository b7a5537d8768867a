"""``brogue corpus``, ``brogue adapt`` and ``brogue eval``: speech data, adapter training, WER."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .common import (DEFAULT_MODEL_REPO, DISTILL_WEIGHT, REPLAY, REPLAY_FRACTION, REPLAY_LOSS, REPO, SPEED_PERTURB,
                     _fail, app, console)


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
    replay: Optional[Path] = REPLAY,
    replay_fraction: float = REPLAY_FRACTION,
    replay_loss: str = REPLAY_LOSS,
    distill_weight: float = DISTILL_WEIGHT,
    domain_lm: float = typer.Option(0.0, help="Store the manifest's sentences as the adapter's domain LM, "
                                              "mixed into the model's LM at this prior weight (0: none)."),
    speed_perturb: float = SPEED_PERTURB,
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
    by: list[str] = typer.Option([], "--by", help="Also report WER per value of this manifest field (repeatable): "
                                                   "family (voice family) and group (text source) on the held-out "
                                                   "splits of recipes/corpus_heldout.py."),
):
    """Stream a manifest chunk by chunk through the exported model; last line: WER=<%> CER=<%>."""
    from brogue.clients.eval import EvalError, evaluate

    try:
        r = evaluate(manifest, model_dir=model_dir, adapter=adapter, store=store, batch=batch, limit=limit,
                     decoder=decoder)
        groups = {key: r.breakdown(key) for key in by}
    except EvalError as e:
        _fail(str(e))
    for ref, hyp in list(zip(r.refs, r.hyps))[:show]:
        typer.echo(f"REF: {ref}\nHYP: {hyp}")
    typer.echo(f"{r.n} utterances, {r.hours * 60:.1f} min of audio, {r.seconds:.1f} s "
               f"({r.hours * 3600 / max(r.seconds, 1e-9):.0f}x real time), adapter {r.adapter or 'none'}, "
               f"decoder {r.decoder}")
    for key, rows in groups.items():
        for value, g in rows.items():
            typer.echo(f"  {key} {value}: {g['utterances']} utterances, "
                       f"WER {g['wer'] * 100:.2f} CER {g['cer'] * 100:.2f}")
    typer.echo(f"WER={r.wer * 100:.2f} CER={r.cer * 100:.2f}")
