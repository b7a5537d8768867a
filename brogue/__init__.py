"""Brogue: multi-tenant streaming speech recognition with per-tenant adapters, served by Triton."""

__version__ = "0.1.0"
