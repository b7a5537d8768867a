"""What every command module shares: the Typer app, the console, the repository's paths, failing."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Brogue: multi-tenant streaming ASR.")
console = Console(stderr=True)

REPO = Path(__file__).resolve().parents[2]
DEFAULT_MODEL_REPO = REPO / "model_repo"

# The training-data options `brogue adapt` and `brogue finetune` share (one definition each).
REPLAY = typer.Option(None, help="Manifest of general speech (e.g. the base model's training set) mixed into "
                                 "training, so the model does not drift on other speakers.")
REPLAY_FRACTION = typer.Option(0.25, help="Share of the training rows drawn from --replay.")
REPLAY_LOSS = typer.Option("ctc", help="On the --replay rows: 'ctc' (learn their transcripts) or 'distill' "
                                       "(keep the base model's output on them).")
DISTILL_WEIGHT = typer.Option(1.0, help="Weight of the distillation loss (--replay-loss distill).")
SPEED_PERTURB = typer.Option(0.0, help="Play most training clips at a random speed in 1 +- this (more apparent "
                                       "speakers; 0: off).")


def _fail(message: str) -> None:
    console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(2)
