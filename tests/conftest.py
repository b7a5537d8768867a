"""Shared fixtures: a tiny exported model with adapters in a store, and a real tritonserver on it."""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
ADAPTER_NAMES = ["scot", "carib", "med", "indian", "ger", "span", "legal", "fin"]


@dataclass
class TinyRepo:
    """A Triton model repository like model_repo/, around a tiny exported model."""

    root: Path
    model_dir: Path
    store_dir: Path
    refs: dict  # adapter name -> "name@v1"
    arrays: dict  # adapter name -> store arrays (v1)
    model: object  # the NeMo model (adapters disabled)


def _random_arrays(rng, n_layers, d_model, dim):
    return {
        "ln_weight": (1.0 + 0.2 * rng.standard_normal((n_layers, d_model))).astype(np.float32),
        "ln_bias": (0.2 * rng.standard_normal((n_layers, d_model))).astype(np.float32),
        "down": (0.3 * rng.standard_normal((n_layers, dim, d_model))).astype(np.float32),
        "up": (0.3 * rng.standard_normal((n_layers, d_model, dim))).astype(np.float32),
    }


def model_config(root: Path, name: str, **params) -> None:
    """Copy model_repo/asr_streaming into ``root/name``, renamed, with some parameters changed."""
    src = REPO / "model_repo" / "asr_streaming"
    dst = root / name
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
    cfg = (dst / "config.pbtxt").read_text().replace('name: "asr_streaming"', f'name: "{name}"')
    for key, value in params.items():
        cfg, n = re.subn(rf'(key: "{key}", value: {{ string_value: )"[^"]*"', rf'\1"{value}"', cfg)
        assert n == 1, key
    (dst / "config.pbtxt").write_text(cfg)


@pytest.fixture(scope="session")
def tiny_repo(tmp_path_factory) -> TinyRepo:
    """A tiny CTC model (random weights, made to emit tokens), exported, with 8 adapters v1."""
    import torch

    from brogue.adapters import publish_adapter
    from brogue.export.configs import build_model
    from brogue.export.nemo_export import export_model, fingerprint
    from nemo_reference import make_talkative

    root = tmp_path_factory.mktemp("repo")
    torch.manual_seed(0)
    model = build_model("ctc", d_model=64, n_layers=2, n_heads=2, att_context_size=[16, 7]).eval()
    make_talkative(model)
    model_dir = root / "exported" / "demo"
    export_model(model, model_dir, max_adapter_dim=16)
    fp = fingerprint(model)
    rng = np.random.default_rng(11)
    refs, arrays = {}, {}
    for name in ADAPTER_NAMES:
        arrays[name] = _random_arrays(rng, 2, 64, 8)
        m = publish_adapter(root / "adapters", arrays[name], name=name, version="v1", kind="test",
                            base_fingerprint=fp)
        refs[name] = f"{m.name}@{m.version}"
    model_config(root, "asr_streaming")
    return TinyRepo(root, model_dir, root / "adapters", refs, arrays, model)


def speechlike(rng, seconds: float) -> np.ndarray:
    """Random noise bursts (the tiny models are untrained: any signal will do, but vary it)."""
    n = int(seconds * 16000)
    env = np.repeat(rng.uniform(0.0, 0.3, size=n // 1600 + 1), 1600)[:n]
    return (rng.standard_normal(n) * env).astype(np.float32)
