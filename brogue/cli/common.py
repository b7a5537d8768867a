"""What every command module shares: the Typer app, the console, the repository's paths, failing."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Brogue: multi-tenant streaming ASR.")
console = Console(stderr=True)

REPO = Path(__file__).resolve().parents[2]
DEFAULT_MODEL_REPO = REPO / "model_repo"


def _fail(message: str) -> None:
    console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(2)
