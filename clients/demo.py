"""``brogue demo``: the whole data path on this machine, end to end.

It starts the bundled tritonserver on a model repository holding ``asr_streaming``, the exported
model and the adapter store, then streams a WAV file through two sequences at once, one on the base
model and one on an adapter, printing each partial as Triton returns it, and the chunk latencies.

Until the trained demo model is committed (``model_repo/exported/demo``), the demo exports a model
built from config with *untrained* weights and publishes random adapters: the data path, batching
and adapters are real, the words are not. It says so when it runs.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
TRAINED = REPO / "model_repo" / "exported" / "demo"


def _untrained_model(dest: Path) -> list[str]:
    """Export an untrained model from config into ``dest/exported/demo``; publish 2 random adapters."""
    import torch

    from brogue.adapters import publish_adapter
    from brogue.export.configs import build_model
    from brogue.export.nemo_export import export_model

    torch.manual_seed(0)
    model = build_model("ctc", att_context_size=[70, 6])
    meta = export_model(model, dest / "exported" / "demo", max_adapter_dim=32)
    rng = np.random.default_rng(0)
    L, d = meta["encoder"]["n_layers"], meta["encoder"]["d_model"]
    refs = []
    for name in ("accent", "domain"):
        arrays = {"ln_weight": np.ones((L, d), np.float32), "ln_bias": np.zeros((L, d), np.float32),
                  "down": (0.1 * rng.standard_normal((L, 32, d))).astype(np.float32),
                  "up": (0.1 * rng.standard_normal((L, d, 32))).astype(np.float32)}
        m = publish_adapter(dest / "adapters", arrays, name=name, version="v1", kind="random",
                            base_fingerprint=meta["fingerprint"])
        refs.append(f"{m.name}@{m.version}")
    return refs


def _load_audio(path: Path | None) -> np.ndarray:
    if path is None:  # two seconds of a chirp with a pause: any signal shows the data path
        t = np.arange(int(3.0 * 16000)) / 16000
        x = 0.3 * np.sin(2 * np.pi * (200 + 300 * t) * t) * (np.sin(2 * np.pi * 0.7 * t) > -0.3)
        return x.astype(np.float32)
    import soundfile as sf

    audio, sr = sf.read(str(path), dtype="float32", always_2d=True)
    audio = audio.mean(axis=1)
    if sr != 16000:
        raise SystemExit(f"{path}: {sr} Hz; the demo takes 16 kHz audio (the gateway will resample)")
    return audio


def run_demo(audio_path: Path | None = None, console=print) -> None:
    from brogue.clients.triton_sequence import TritonSequence
    from brogue.engine.metadata import ModelMeta
    from brogue.server.tritonserver import TritonProcess

    with tempfile.TemporaryDirectory(prefix="brogue-demo-") as tmp:
        root = Path(tmp)
        if (TRAINED / "model.json").is_file():
            shutil.copytree(TRAINED, root / "exported" / "demo")
            shutil.copytree(REPO / "model_repo" / "adapters", root / "adapters")
            refs = [p.parent.name + "@" + p.name for p in sorted((root / "adapters").glob("*/*")) if p.is_dir()]
        else:
            console("NOTE: no trained demo model in model_repo/exported/demo yet: exporting an UNTRAINED model "
                    "from config, with random adapters. The data path is real; the transcripts are noise.")
            refs = _untrained_model(root)
        shutil.copytree(REPO / "model_repo" / "asr_streaming", root / "asr_streaming",
                        ignore=shutil.ignore_patterns("__pycache__"))
        meta = ModelMeta.load(root / "exported" / "demo")
        chunk = meta.latency(None).shift_size[1] * meta.mel.hop_length
        audio = _load_audio(audio_path)
        console(f"starting tritonserver ({meta.n_layers}x{meta.d_model} {meta.head} model, "
                f"{chunk * 1000 // 16000} ms chunks) ...")
        with TritonProcess(root, models=("asr_streaming",)).start(timeout=240) as server:
            console(f"Triton ready at {server.grpc_url}; streaming {len(audio) / 16000:.1f} s in real time")
            streams = [("base", ""), (refs[0], refs[0])] if refs else [("base", "")]
            lock = threading.Lock()

            def play(i, label, ref):
                lat, text = [], ""
                with TritonSequence(server.grpc_url, 1 + i, adapter=ref) as seq:
                    start = time.monotonic()
                    for k, pos in enumerate(range(0, len(audio), chunk)):
                        time.sleep(max(0.0, start + k * chunk / 16000 - time.monotonic()))
                        t = time.perf_counter()
                        r = seq.send(audio[pos:pos + chunk], end=pos + chunk >= len(audio))
                        lat.append(time.perf_counter() - t)
                        text += r.text
                        with lock:
                            console(f"  [{label:>12}] {'final  ' if r.final else 'partial'} {text.strip()!r}")
                with lock:
                    console(f"  [{label:>12}] chunk latency p50 {np.median(lat) * 1000:.1f} ms, "
                            f"max {max(lat) * 1000:.1f} ms over {len(lat)} chunks")

            threads = [threading.Thread(target=play, args=(i, label, ref)) for i, (label, ref) in enumerate(streams)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
