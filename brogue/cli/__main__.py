"""``python -m brogue.cli``."""

from . import app

app()
