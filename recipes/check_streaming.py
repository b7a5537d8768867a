"""Streaming WER through the exported ONNX model vs NeMo's own cache-aware streaming, same audio.

    python recipes/check_streaming.py --nemo model_repo/demo.nemo --model-dir model_repo/exported/demo \
        --manifest /work/data/base_test.json --limit 40
    python recipes/check_streaming.py ... --manifest /work/data/german_test.json --adapter german@v1
    python recipes/check_streaming.py ... --data /work/data --limit 0     # every held-out split, own adapter

NeMo side: ``CacheAwareStreamingAudioBuffer`` + ``conformer_stream_step`` chunk by chunk (the
reference in tests/nemo_reference.py). Brogue side: ``StreamingRunner`` (numpy mel + ONNX Runtime),
fed one steady chunk of audio per step. Both decode greedily (NeMo's streaming does; the LM is
Brogue's own). With ``--adapter NAME@VERSION`` both run with that adapter-store entry: Brogue
through its bank, NeMo with the entry's tensors loaded into a LinearAdapter of its own. Prints
both WERs, the number of identical transcripts, and writes the results as JSON (``--json``); exits
non-zero if any transcript differs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))  # nemo_reference: NeMo's own streaming, as the tests run it


ADAPTED = ["scottish", "caribbean", "indian", "german", "medical"]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nemo", type=Path, required=True)
    ap.add_argument("--model-dir", type=Path, required=True)
    what = ap.add_mutually_exclusive_group(required=True)
    what.add_argument("--manifest", type=Path, help="one manifest (with --adapter, or the base model alone)")
    what.add_argument("--data", type=Path, help="the corpus: the base split alone, then each set's split "
                                                "with its own adapter (the newest version in --store)")
    ap.add_argument("--split", default="heldout", help="which split of each set with --data: heldout "
                                                       "(recipes/corpus_heldout.py, the default) or test")
    ap.add_argument("--limit", type=int, default=40, help="utterances per manifest (0: all)")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--adapter", default=None, help="NAME@VERSION in --store, on both sides")
    ap.add_argument("--store", type=Path, default=REPO / "model_repo" / "adapters")
    a = ap.parse_args(argv)

    import torch

    from brogue.adapters.store import AdapterStore

    torch.set_num_threads(2)
    if a.manifest:
        pairs = [(a.manifest, a.adapter)]
    else:
        st = AdapterStore(a.store)
        pairs = [(a.data / f"base_{a.split}.json", None)]
        pairs += [(a.data / f"{n}_{a.split}.json", f"{n}@{st.versions(n)[-1]}") for n in ADAPTED]
    from brogue.export.nemo_model import load_nemo

    model = load_nemo(a.nemo)  # once: each entry is added to it once, then switched on alone
    runs = [compare(model, a.model_dir, m, ad, a.store, a.limit or None) for m, ad in pairs]
    if a.json:
        a.json.write_text(json.dumps({"runs": runs}, indent=1) + "\n")
    bad = [r for r in runs if r["identical_transcripts"] != r["utterances"]]
    if bad:
        raise SystemExit(f"{len(bad)} of {len(runs)} runs differ from NeMo")


def compare(model, model_dir: Path, manifest: Path, adapter: str | None, store: Path, limit: int | None) -> dict:
    """Greedy streaming transcripts of ``manifest`` from Brogue and from the NeMo ``model``; prints
    and returns the result."""
    from nemo_reference import nemo_streaming, use_adapter

    from brogue.clients.eval import error_rates, load_audio, make_runner, read_manifest, transcribe

    rows = read_manifest(manifest, limit)
    audios = [load_audio(r["audio_filepath"], 16000) for r in rows]
    refs = [r["text"] for r in rows]
    runner, ref = make_runner(model_dir, adapter, store, decoder="greedy")
    t0 = time.time()
    onnx_hyps = transcribe(runner, audios, 1 if ref else 0)
    t_onnx = time.time() - t0
    if ref:
        load_entry_into_nemo(model, store, ref)
    else:
        use_adapter(model, None)
    t0 = time.time()
    nemo_hyps = []
    for x in audios:
        tokens, _ = nemo_streaming(model, x)
        nemo_hyps.append(runner.detok.decode(tokens))
    t_nemo = time.time() - t0
    w_onnx, c_onnx = error_rates(refs, onnx_hyps)
    w_nemo, c_nemo = error_rates(refs, nemo_hyps)
    same = sum(h1 == h2 for h1, h2 in zip(onnx_hyps, nemo_hyps))
    res = {"manifest": manifest.name, "adapter": ref, "utterances": len(rows), "onnx_wer": round(w_onnx * 100, 2),
           "nemo_wer": round(w_nemo * 100, 2), "onnx_cer": round(c_onnx * 100, 2), "nemo_cer": round(c_nemo * 100, 2),
           "identical_transcripts": same, "onnx_seconds": round(t_onnx, 1), "nemo_seconds": round(t_nemo, 1)}
    for i, (h1, h2) in enumerate(zip(onnx_hyps, nemo_hyps)):
        if h1 != h2:
            print(f"differs #{i}: onnx {h1!r} nemo {h2!r}")
    print(json.dumps(res), flush=True)
    return res


def load_entry_into_nemo(model, store: Path, ref: str) -> None:
    """Give ``model`` a LinearAdapter holding the store entry's tensors (once per name), enabled alone."""
    from nemo_reference import use_adapter

    from brogue.adapters import read_adapter
    from brogue.export.adapter import adapter_into_model

    name, version = ref.split("@")
    if name not in getattr(model.encoder.layers[0], "adapter_layer", {}):
        adapter_into_model(model, name, read_adapter(store / name / version, None))
    use_adapter(model, name)
    model.eval()


if __name__ == "__main__":
    main()
