"""A model repository around any Brogue export, for ``brogue bench`` on models other than the demo.

``python recipes/bench_repo.py EXPORT_DIR OUT [--nemo SOURCE.nemo] [--adapters 2] [--rank 8]``
writes ``OUT/exported/NAME`` (a link to the export), ``OUT/asr_streaming`` (the committed Triton
model), ``OUT/NAME.nemo`` (a link to the source, for the NeMo and sherpa-onnx comparisons) and
``OUT/adapters/``: ``adapters`` adapters of rank ``rank`` with small random weights, published for
the export's fingerprint. They cost what trained adapters of that rank cost (the bank's work does
not depend on the values); they are for measuring speed, never accuracy.

Used for the 114 M shape (docs/performance.md, "The serving hot path"), whose export comes from
``recipes/nvidia_shapes.py`` and ``brogue export``.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np

from brogue.adapters import publish_adapter
from brogue.engine.metadata import ModelMeta

REPO = Path(__file__).resolve().parent.parent


def make_bench_repo(export_dir: Path, out: Path, nemo: Path | None = None, adapters: int = 2, rank: int = 8,
                    seed: int = 0) -> Path:
    meta = ModelMeta.load(export_dir)
    name = meta.raw["name"]
    out.mkdir(parents=True, exist_ok=True)
    (out / "exported").mkdir(exist_ok=True)
    link = out / "exported" / name
    if not link.exists():
        link.symlink_to(Path(export_dir).resolve(), target_is_directory=True)
    if nemo is not None and not (out / f"{name}.nemo").exists():
        (out / f"{name}.nemo").symlink_to(Path(nemo).resolve())
    shutil.rmtree(out / "asr_streaming", ignore_errors=True)
    shutil.copytree(REPO / "model_repo" / "asr_streaming", out / "asr_streaming")
    rng = np.random.default_rng(seed)
    layers, d = meta.n_layers, meta.d_model
    for i in range(adapters):
        if (out / "adapters" / f"random{i}" / "v1").exists():
            continue
        arrays = {"ln_weight": np.ones((layers, d), np.float32), "ln_bias": np.zeros((layers, d), np.float32),
                  "down": (rng.standard_normal((layers, rank, d)) * 0.01).astype(np.float32),
                  "up": (rng.standard_normal((layers, d, rank)) * 0.01).astype(np.float32)}
        publish_adapter(out / "adapters", arrays, name=f"random{i}", version="v1", base_fingerprint=meta.fingerprint)
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("export_dir", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--nemo", type=Path, help="the export's source .nemo (for the peer comparisons)")
    ap.add_argument("--adapters", type=int, default=2)
    ap.add_argument("--rank", type=int, default=8)
    a = ap.parse_args(argv)
    print(make_bench_repo(a.export_dir, a.out, a.nemo, a.adapters, a.rank))


if __name__ == "__main__":
    main()
