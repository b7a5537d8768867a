"""``brogue models push|assign|pin|unpin|list``: model versions (full fine-tunes) through a running
gateway's admin API (docs/models.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .adapters import _ADMIN, _TLS_CA, _TOKEN, _admin_call
from .common import _fail, app, console

models_app = typer.Typer(no_args_is_help=True, help="Publish exported models (full fine-tunes) as versions served "
                                                     "beside the base, roll them out, and point tenants at them.")
app.add_typer(models_app, name="models")


@models_app.command("push")
def models_push(
    folder: Path = typer.Argument(..., help="An export folder (`brogue export` or `brogue finetune`)."),
    name: str = typer.Option(..., "--name", help="Model name ([a-z0-9][a-z0-9._-]*)."),
    version: str = typer.Option(..., "--version", help="Version, e.g. v2 (entries are immutable)."),
    rollout: bool = typer.Option(True, "--rollout/--no-rollout", help="Move the tenants on other versions of NAME "
                                                                       "to this one (their open streams finish first)."),
    description: str = typer.Option("", "--description"),
    kind: str = typer.Option("full", "--kind", help="Free text; 'full' for a full fine-tune."),
    parent_fingerprint: str = typer.Option("", "--parent-fingerprint", help="The model it was fine-tuned from."),
    admin: str = _ADMIN, token: Optional[str] = _TOKEN, tls_ca: Optional[Path] = _TLS_CA,
):
    """Upload an exported model to the gateway's model store as NAME@VERSION (and roll it out)."""
    if not (folder / "model.json").is_file():
        _fail(f"{folder}: no model.json (export the model with `brogue export` first)")
    r = _admin_call(admin, token, tls_ca, lambda c: c.publish_model(
        folder, name, version, kind=kind, description=description, parent_fingerprint=parent_fingerprint,
        rollout=rollout))
    typer.echo(r.model.ref)
    moved = f"; tenants moved: {', '.join(r.moved_tenants)}" if r.moved_tenants else ""
    console.print(f"stored {r.model.ref} ({r.model.size_bytes >> 20} MiB on disk, {r.model.serving_bytes >> 20} MiB "
                  f"to serve){moved}")


@models_app.command("assign")
def models_assign(
    tenant: str = typer.Argument(..., help="Tenant name."),
    model: str = typer.Argument(..., help="NAME@VERSION in the model store, or 'base' for the deployment's base."),
    adapter: str = typer.Option("", "--adapter", help="An adapter trained on that model (default: none)."),
    admin: str = _ADMIN, token: Optional[str] = _TOKEN, tls_ca: Optional[Path] = _TLS_CA,
):
    """Point TENANT at a model version (and an adapter of it): new streams use them, open ones keep theirs."""
    ref = "" if model in ("base", "") else model
    t = _admin_call(admin, token, tls_ca, lambda c: c.assign_model(tenant, ref, adapter))
    console.print(f"tenant {t.name} -> {t.model or 'base model'}, adapter {t.adapter or 'none'} (new streams)")


@models_app.command("pin")
def models_pin(model: str = typer.Argument(..., help="NAME@VERSION."),
               admin: str = _ADMIN, token: Optional[str] = _TOKEN, tls_ca: Optional[Path] = _TLS_CA):
    """Keep a model version loaded: it is never unloaded to make room."""
    m = _admin_call(admin, token, tls_ca, lambda c: c.pin_model(model, True))
    console.print(f"{m.ref} pinned")


@models_app.command("unpin")
def models_unpin(model: str = typer.Argument(..., help="NAME@VERSION."),
                 admin: str = _ADMIN, token: Optional[str] = _TOKEN, tls_ca: Optional[Path] = _TLS_CA):
    """Let a model version be unloaded when idle and room is needed (or no tenant uses it)."""
    m = _admin_call(admin, token, tls_ca, lambda c: c.pin_model(model, False))
    console.print(f"{m.ref} unpinned")


@models_app.command("list")
def models_list(
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    admin: str = _ADMIN, token: Optional[str] = _TOKEN, tls_ca: Optional[Path] = _TLS_CA,
):
    """List the base model and the store's versions: size, serving memory, where loaded, tenants."""
    import json

    from rich.table import Column, Table

    from brogue.clients.admin import model_dict

    r = _admin_call(admin, token, tls_ca, lambda c: c.models())
    if as_json:
        typer.echo(json.dumps({"budget_bytes": r.budget_bytes, "models": [model_dict(m) for m in r.models]}, indent=2))
        return
    budget = f"{r.budget_bytes >> 20} MiB per Triton instance" if r.budget_bytes else "no limit"
    labels = [m.ref or f"base ({m.name})" for m in r.models]
    table = Table(Column("model", no_wrap=True, min_width=max(len(x) for x in labels)), "kind", "disk MiB",
                  "serving MiB", "loaded", "live", "pinned", "tenants", "status", title=f"models (memory budget: {budget})")
    for label, m in zip(labels, r.models):
        table.add_row(label, m.kind or ("base" if m.base else ""), str(m.size_bytes >> 20),
                      str(m.serving_bytes >> 20), str(m.instances_loaded), str(m.live_streams),
                      "yes" if m.pinned else "", ", ".join(m.tenants),
                      f"[red]{m.error_code}: {m.error}[/]" if m.error else "ok")
    console.print(table)
