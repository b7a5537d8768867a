"""Streaming WER through the exported ONNX model vs NeMo's own cache-aware streaming, same audio.

    python recipes/check_streaming.py --nemo model_repo/demo.nemo --model-dir model_repo/exported/demo \
        --manifest /work/data/base_test.json --limit 40

NeMo side: ``CacheAwareStreamingAudioBuffer`` + ``conformer_stream_step`` chunk by chunk (the
reference in tests/nemo_reference.py). Brogue side: ``StreamingRunner`` (numpy mel + ONNX Runtime),
fed one steady chunk of audio per step. Prints both WERs, the number of identical transcripts, and
writes the result as JSON (``--json``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nemo", type=Path, required=True)
    ap.add_argument("--model-dir", type=Path, required=True)
    ap.add_argument("--manifest", type=Path, required=True)
    ap.add_argument("--limit", type=int, default=40)
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args(argv)

    import torch

    sys.path.insert(0, str(REPO / "tests"))
    from nemo_reference import nemo_streaming

    from brogue.clients.eval import error_rates, load_audio, make_runner, read_manifest, transcribe
    from brogue.export.nemo_export import load_nemo

    torch.set_num_threads(2)
    rows = read_manifest(a.manifest, a.limit)
    audios = [load_audio(r["audio_filepath"], 16000) for r in rows]
    refs = [r["text"] for r in rows]
    runner, _ = make_runner(a.model_dir, None, None)
    t0 = time.time()
    onnx_hyps = transcribe(runner, audios, 0)
    t_onnx = time.time() - t0
    model = load_nemo(a.nemo)
    t0 = time.time()
    nemo_hyps = []
    for x in audios:
        tokens, _ = nemo_streaming(model, x)
        nemo_hyps.append(runner.detok.decode(tokens))
    t_nemo = time.time() - t0
    w_onnx, c_onnx = error_rates(refs, onnx_hyps)
    w_nemo, c_nemo = error_rates(refs, nemo_hyps)
    same = sum(h1 == h2 for h1, h2 in zip(onnx_hyps, nemo_hyps))
    res = {"manifest": a.manifest.name, "utterances": len(rows), "onnx_wer": round(w_onnx * 100, 2),
           "nemo_wer": round(w_nemo * 100, 2), "onnx_cer": round(c_onnx * 100, 2), "nemo_cer": round(c_nemo * 100, 2),
           "identical_transcripts": same, "onnx_seconds": round(t_onnx, 1), "nemo_seconds": round(t_nemo, 1)}
    for i, (h1, h2) in enumerate(zip(onnx_hyps, nemo_hyps)):
        if h1 != h2:
            print(f"differs #{i}: onnx {h1!r} nemo {h2!r}")
    print(json.dumps(res))
    if a.json:
        a.json.write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
