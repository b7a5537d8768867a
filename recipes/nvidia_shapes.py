"""Build NVIDIA's two released cache-aware streaming architectures as ``.nemo`` files, random weights.

No pretrained weights can be downloaded on the build hosts, so this recipe instantiates the published
architectures from their NeMo configs with random weights and a 1024-piece SentencePiece tokenizer.
The result is a ``.nemo`` that ``brogue export`` takes as it is, exactly as it would take the
downloaded checkpoint: same classes, same shapes, same streaming settings.

``large``: ``stt_en_fastconformer_hybrid_large_streaming_multi``, NeMo's
``fastconformer_hybrid_transducer_ctc_bpe_streaming`` config: a hybrid RNNT + CTC model, 17
FastConformer layers of 512 with 8 heads, conv kernel 9, dw_striding subsampling x8 with 256
channels, att_context_size [[70,13],[70,6],[70,1],[70,0]]; 1 LSTM layer of 640 in the prediction
network, joint of 640. About 114.8 M parameters.

``xl``: ``nemotron-speech-streaming-en-0.6b``: an RNNT model, 24 layers of 1024 with 8 heads and no
biases in the conformer blocks, the same subsampling and context list; 2 LSTM layers of 640 and a
joint of 640. About 617 M parameters (2.47 GB of fp32).

The tokenizer is trained on English text that ships with Python itself (the docstrings of the
standard library), lower-cased to what an ASR vocabulary holds.

Usage::

    .venv/bin/python recipes/nvidia_shapes.py large OUT      # OUT/large.nemo
    .venv/bin/python recipes/nvidia_shapes.py xl OUT         # OUT/xl.nemo
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import resource
import sysconfig
import time
from pathlib import Path

SHAPES = {
    "large": dict(head="hybrid", d_model=512, n_layers=17, n_heads=8, pred_hidden=640, joint_hidden=640,
                  pred_rnn_layers=1, subsampling_conv_channels=256, use_bias=True),
    "xl": dict(head="rnnt", d_model=1024, n_layers=24, n_heads=8, pred_hidden=640, joint_hidden=640,
               pred_rnn_layers=2, subsampling_conv_channels=256, use_bias=False),
}
CONTEXTS = [[70, 13], [70, 6], [70, 1], [70, 0]]
VOCAB_SIZE = 1024


def packaged_text(limit_chars: int = 6_000_000) -> list[str]:
    """Lower-cased sentences from the docstrings of Python's standard library (sorted file order)."""
    lines: list[str] = []
    total = 0
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).rglob("*.py")):
        if "test" in path.parts or "idlelib" in path.parts:
            continue
        try:
            tree = ast.parse(path.read_text(errors="replace"))
        except (SyntaxError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node) or ""
                for sentence in re.split(r"[.!?]\s+|\n\s*\n", doc):
                    words = re.sub(r"[^a-z' ]+", " ", sentence.lower()).split()
                    if len(words) >= 4:
                        lines.append(" ".join(words))
                        total += len(lines[-1])
        if total >= limit_chars:
            break
    return lines


def train_tokenizer(out: Path, vocab_size: int = VOCAB_SIZE) -> Path:
    """A SentencePiece BPE model of ``vocab_size`` pieces (and NeMo's vocab.txt) in ``out``."""
    import sentencepiece as spm

    out.mkdir(parents=True, exist_ok=True)
    (out / "text.txt").write_text("\n".join(packaged_text()) + "\n")
    spm.SentencePieceTrainer.train(input=str(out / "text.txt"), model_prefix=str(out / "tokenizer"),
                                   vocab_size=vocab_size, model_type="bpe", character_coverage=1.0,
                                   bos_id=-1, eos_id=-1, num_threads=2, minloglevel=2)
    sp = spm.SentencePieceProcessor(model_file=str(out / "tokenizer.model"))
    (out / "vocab.txt").write_text("".join(sp.id_to_piece(i) + "\n" for i in range(sp.get_piece_size())))
    (out / "text.txt").unlink()
    return out


def build(shape: str, out: Path, seed: int = 0) -> tuple[Path, int]:
    """Write ``out/<shape>.nemo`` (random weights); returns its path and parameter count."""
    import torch

    from brogue.export.configs import build_model

    spec = dict(SHAPES[shape])
    head = spec.pop("head")
    tok = train_tokenizer(out / f"{shape}.tokenizer")
    torch.manual_seed(seed)
    model = build_model(head, tokenizer_dir=tok, att_context_size=CONTEXTS, **spec).eval()
    path = out / f"{shape}.nemo"
    model.save_to(str(path))
    return path, sum(p.numel() for p in model.parameters())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("shape", choices=sorted(SHAPES))
    ap.add_argument("out", type=Path)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    path, params = build(a.shape, a.out, a.seed)
    report = {"shape": a.shape, "nemo": str(path), "parameters": params, "nemo_bytes": path.stat().st_size,
              "seconds": round(time.perf_counter() - t0, 1),
              "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024}
    print(json.dumps(report))


if __name__ == "__main__":
    main()
