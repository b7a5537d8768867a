"""How much of a base model's accuracy is memorised sentences: greedy WER (full-context forward, as
train_base.py's probe) on training rows against the unseen base_dev split.

    python recipes/fit_gap.py --data /work/data model_repo/demo.nemo [OTHER.nemo ...]

Prints one line per model: ``MODEL train=<WER> dev=<WER>`` (120 seeded-random base_train rows; all
of base_dev: unseen sentences, the training split's flite/Festival/mbrola/pico voices and held-out
espeak-ng variants). A large gap means the model learnt its training sentences, not English.
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_base import greedy_wer  # noqa: E402

from brogue.clients.eval import read_manifest  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+", type=Path)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--train-rows", type=int, default=120)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args(argv)

    import torch
    from nemo.core import ModelPT

    torch.set_num_threads(a.threads)
    dev = read_manifest((a.data / "base_dev.json").resolve())
    train = read_manifest((a.data / "base_train.json").resolve())
    random.Random(1).shuffle(train)
    for p in a.models:
        model = ModelPT.restore_from(str(p), map_location="cpu")
        tr, dv = greedy_wer(model, train[: a.train_rows])[0], greedy_wer(model, dev)[0]
        print(f"{p} train={tr:.2f} dev={dv:.2f}", flush=True)


if __name__ == "__main__":
    main()
