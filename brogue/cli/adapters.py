"""``brogue adapters push|assign|boost|list``: the admin API of a running gateway."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from .common import _fail, app, console


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
    model: str = typer.Option("", "--model", help="The model version it was trained on (NAME@VERSION of the model "
                                                  "store; default: the deployment's base)."),
    admin: str = _ADMIN, token: Optional[str] = _TOKEN, tls_ca: Optional[Path] = _TLS_CA,
):
    """Validate an adapter on the gateway and add it to its store as NAME@VERSION."""
    from brogue.adapters import AdapterError
    from brogue.clients.admin import push_request

    try:
        req = push_request(path, name=name, version=version, kind=kind, description=description,
                           base_fingerprint=base_fingerprint, domain_lm=domain_lm, domain_lm_weight=domain_lm_weight,
                           model=model)
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


@adapters_app.command("boost")
def adapters_boost(
    tenant: str = typer.Argument(..., help="Tenant name."),
    phrases: list[str] = typer.Argument(None, help="Phrases, each PHRASE or PHRASE:BOOST (default boost 8); "
                                                  "none clears the tenant's list."),
    admin: str = _ADMIN, token: Optional[str] = _TOKEN, tls_ca: Optional[Path] = _TLS_CA,
):
    """Set TENANT's boost phrases, merged into each of its new streams (docs/boosting.md)."""
    pairs = []
    for item in phrases or []:
        text, sep, boost = item.rpartition(":")
        try:
            pairs.append((text, float(boost)) if sep else (item, 0.0))
        except ValueError:
            pairs.append((item, 0.0))  # a colon inside the phrase, no boost
    t = _admin_call(admin, token, tls_ca, lambda c: c.set_boost(tenant, pairs))
    listed = ", ".join(f"{p.phrase} ({p.boost:g})" for p in t.boost) or "none"
    console.print(f"tenant {t.name} boosts: {listed} (new streams)")


@adapters_app.command("list")
def adapters_list(
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    admin: str = _ADMIN, token: Optional[str] = _TOKEN, tls_ca: Optional[Path] = _TLS_CA,
):
    """List the store's adapters (validated against the served model) and the tenants."""
    import json

    from rich.table import Column, Table

    from brogue.clients.admin import adapter_dict, tenant_dict

    adapters, tenants = _admin_call(admin, token, tls_ca, lambda c: (c.adapters(), c.tenants()))
    if as_json:
        typer.echo(json.dumps({"adapters": [adapter_dict(a) for a in adapters],
                               "tenants": [tenant_dict(t) for t in tenants]}, indent=2))
        return
    out = Console()
    table = Table("kind", "dim", "sha256", "base", "tenants", "status", title="adapters")
    # references stay whole (long error messages wrap instead)
    table.columns.insert(0, Column("adapter", no_wrap=True, min_width=max([len(a.ref) for a in adapters] + [7])))
    for a in adapters:
        table.add_row(a.ref, a.kind, str(a.dim or ""), a.sha256[:12], a.base_fingerprint[:12],
                      ", ".join(a.tenants), f"[red]{a.error_code}: {a.error}[/]" if a.error else "ok")
    out.print(table)
    table = Table("tenant", "model", "adapter", "max streams", "max seconds", "live", "keys", title="tenants")
    for t in tenants:
        table.add_row(t.name, t.model or "(base model)", t.adapter or "(none)", str(t.max_streams),
                      f"{t.max_stream_seconds:g}", str(t.live_streams), str(t.api_keys))
    out.print(table)
