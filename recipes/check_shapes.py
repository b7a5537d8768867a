"""Token-exact check of an export against NeMo's own streaming greedy decoding, at every latency.

For the real-size shapes (``recipes/nvidia_shapes.py``) there is no corpus to score: the weights are
random. What must hold is that the served path computes what NeMo computes: the same clips streamed
through NeMo's ``conformer_stream_step`` (``CacheAwareStreamingAudioBuffer``, greedy, RNNT with
``max_symbols`` per frame) and through Brogue's engine (numpy mel, ONNX Runtime over the shared
weights, batched greedy decoding) give the same tokens, latency by latency::

    .venv/bin/python recipes/check_shapes.py OUT/xl.nemo OUT/exp-xl [--latencies 70_6,70_13] [--json F]

Exits non-zero if any clip's tokens differ.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))  # nemo_reference: NeMo's own streaming, as the tests run it


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("nemo", type=Path)
    ap.add_argument("model_dir", type=Path)
    ap.add_argument("--latencies", default="", help="comma-separated names (default: every exported one)")
    ap.add_argument("--clips", type=Path, nargs="*", default=sorted((REPO / "tests" / "data" / "demo").glob("*.flac")))
    ap.add_argument("--seconds", type=float, default=6.0, help="longest clip length used")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args(argv)

    import soundfile as sf
    import torch
    from nemo_reference import nemo_streaming

    from brogue.engine.runner import StreamingRunner
    from brogue.export.nemo_model import load_nemo

    torch.set_num_threads(2)
    model = load_nemo(a.nemo)
    runner = StreamingRunner(a.model_dir, latencies=a.latencies or None, decoder="greedy", keep_outputs=True)
    audios = [sf.read(c, dtype="float32")[0][: int(a.seconds * 16000)] for c in a.clips]
    runs = []
    for name, lat in runner.latencies.items():
        model.encoder.set_default_att_context_size(list(lat.att_context_size))
        outputs = {i: [] for i in range(len(audios))}

        def collect(res):
            for k, o in res.items():
                outputs[k] += o.outputs

        t0 = time.perf_counter()
        ours = [st.tokens for st in runner.transcribe(audios, latency=name, on_step=collect)]
        t_ours = time.perf_counter() - t0
        t0 = time.perf_counter()
        ref = [nemo_streaming(model, x) for x in audios]
        t_nemo = time.perf_counter() - t0
        theirs = [r[0] for r in ref]
        same = sum(x == y for x, y in zip(ours, theirs))
        # per chunk head outputs (CTC log-probs or RNNT encoder output), NeMo's against the engine's
        diff = max(float(abs(x - y).max()) for i, r in enumerate(ref) for x, y in zip(r[1], outputs[i]))
        run = {"latency": name, "clips": len(audios), "identical": same, "max_abs_diff": diff,
               "tokens": sum(map(len, theirs)),
               "tokens_per_clip": [len(t) for t in theirs], "brogue_s": round(t_ours, 1), "nemo_s": round(t_nemo, 1)}
        runs.append(run)
        print(json.dumps(run), flush=True)
    out = {"nemo": str(a.nemo), "model_dir": str(a.model_dir), "audio_s": round(sum(map(len, audios)) / 16000, 1),
           "max_symbols": (runner.meta.rnnt or {}).get("max_symbols"), "runs": runs}
    if a.json:
        a.json.write_text(json.dumps(out, indent=1) + "\n")
    bad = [r for r in runs if r["identical"] != r["clips"]]
    if bad:
        raise SystemExit(f"tokens differ from NeMo at {[r['latency'] for r in bad]}")


if __name__ == "__main__":
    main()
