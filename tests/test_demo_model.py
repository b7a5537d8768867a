"""The demo model and its adapters (model_repo/), `brogue adapt` and `brogue eval`.

Nothing here synthesises speech or trains more than a few steps: `brogue adapt` runs on a fresh tiny
model and a few seconds of generated audio; the demo checks use the committed artifacts and the
short clips in tests/data/demo (cut from the held-out test splits of the corpus recipe).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from brogue.adapters import BaseSpec, read_adapter
from brogue.cli import app

REPO = Path(__file__).resolve().parent.parent
MODEL_DIR = REPO / "model_repo" / "exported" / "demo"
STORE = REPO / "model_repo" / "adapters"
CLIPS = Path(__file__).resolve().parent / "data" / "demo"
ADAPTERS = ["scottish", "caribbean", "indian", "german", "medical"]
LAST_LINE = re.compile(r"^WER=\d+\.\d\d CER=\d+\.\d\d$")


def _tone_manifest(folder: Path, n: int = 4) -> Path:
    """A manifest with relative paths to a few seconds of generated audio (chirps and noise)."""
    rng = np.random.default_rng(0)
    (folder / "wav").mkdir(parents=True)
    texts = ["a cat", "the dog", "a red hat", "go home"]
    with open(folder / "train.json", "w") as f:
        for i in range(n):
            t = np.arange(int(16000 * (0.8 + 0.2 * i))) / 16000
            x = 0.3 * np.sin(2 * np.pi * (200 + 300 * i + 400 * t) * t) + 0.01 * rng.standard_normal(len(t))
            sf.write(folder / "wav" / f"{i}.wav", x.astype(np.float32), 16000, subtype="PCM_16")
            f.write(json.dumps({"audio_filepath": f"wav/{i}.wav", "duration": len(t) / 16000,
                                "text": texts[i % len(texts)]}) + "\n")
    return folder / "train.json"


@pytest.mark.nemo
def test_adapt_trains_a_few_steps_and_stores_a_valid_entry(tmp_path, monkeypatch):
    import torch

    from brogue.export.configs import build_model
    from brogue.export.nemo_export import fingerprint

    torch.manual_seed(0)
    model = build_model("ctc", d_model=64, n_layers=2, n_heads=2, att_context_size=[8, 1])
    model.save_to(str(tmp_path / "tiny.nemo"))
    manifest = _tone_manifest(tmp_path / "data")
    monkeypatch.chdir(tmp_path)  # the audio paths are relative to data/, the manifest's folder, not the cwd
    res = CliRunner().invoke(app, ["adapt", "--model", str(tmp_path / "tiny.nemo"), "--train", str(manifest),
                                   "--name", "tenant-a", "--dim", "8", "--steps", "3", "--batch-size", "2",
                                   "--store", str(tmp_path / "store"), "--kind", "accent"])
    assert res.exit_code == 0, res.output
    assert res.output.strip().splitlines()[-1] == "tenant-a@v1"
    entry = tmp_path / "store" / "tenant-a" / "v1"
    w = read_adapter(entry, BaseSpec(fingerprint(model), 2, 64, 8))
    assert w.manifest.kind == "accent" and w.manifest.dim == 8
    assert w.down.shape == (2, 8, 64) and w.up.shape == (2, 64, 8)
    assert np.abs(w.up).max() > 0, "the adapter's up projection starts at zero and must have trained"


def test_adapt_refuses_a_manifest_with_missing_audio(tmp_path):
    (tmp_path / "m.json").write_text(json.dumps({"audio_filepath": "nope.wav", "duration": 1.0, "text": "a"}) + "\n")
    res = CliRunner().invoke(app, ["adapt", "--model", str(tmp_path / "x.nemo"), "--train", str(tmp_path / "m.json"),
                                   "--name", "t", "--store", str(tmp_path / "store")])
    assert res.exit_code == 2
    assert "nope.wav" in res.output and not (tmp_path / "store").exists()


def _demo_manifest() -> list[dict]:
    rows = [json.loads(l) for l in open(CLIPS / "manifest.json")]
    assert rows, "tests/data/demo/manifest.json is empty"
    return rows


def test_eval_resolves_relative_paths_and_ends_with_the_score_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative audio paths must be read from the manifest's folder, not the cwd
    res = CliRunner().invoke(app, ["eval", str(CLIPS / "manifest.json"), "--model-dir", str(MODEL_DIR),
                                   "--store", str(STORE), "--adapter", "medical@v1"])
    assert res.exit_code == 0, res.output
    last = res.output.strip().splitlines()[-1]
    assert LAST_LINE.match(last), last
    assert "adapter medical@v1" in res.output


def test_eval_fails_loudly_on_a_missing_adapter(tmp_path):
    res = CliRunner().invoke(app, ["eval", str(CLIPS / "manifest.json"), "--model-dir", str(MODEL_DIR),
                                   "--store", str(STORE), "--adapter", "nobody@v1"])
    assert res.exit_code == 2 and "nobody" in res.output


def test_committed_demo_model_and_adapters_load():
    from brogue.engine.metadata import ModelMeta
    from brogue.server.adapters.store import AdapterStore

    meta = ModelMeta.load(MODEL_DIR)
    base = BaseSpec(meta.fingerprint, meta.n_layers, meta.d_model, meta.max_adapter_dim)
    store = AdapterStore(STORE)
    for name in ADAPTERS:
        assert store.versions(name) == ["v1"], name
        w = store.load(f"{name}@v1", base)
        assert w.manifest.kind in ("accent", "domain")


def test_each_adapter_transcribes_its_own_clip_better_than_the_base():
    """Committed artifacts end to end: on a clip of its own held-out test split, each adapter's
    character error rate is below the base model's, streamed through the ONNX engine."""
    from brogue.clients.eval import error_rates, load_audio, make_runner, transcribe

    rows = _demo_manifest()
    for name in ADAPTERS:
        mine = [r for r in rows if r["set"] == name]
        assert mine, f"no clip for {name} in tests/data/demo"
        runner, ref = make_runner(MODEL_DIR, f"{name}@v1", STORE)
        audios = [load_audio(str(CLIPS / r["audio_filepath"]), 16000) for r in mine]
        texts = [r["text"] for r in mine]
        _, cer_base = error_rates(texts, transcribe(runner, audios, 0))
        _, cer_adapted = error_rates(texts, transcribe(runner, audios, 1))
        assert cer_adapted < cer_base, f"{ref}: CER {cer_adapted:.3f} with the adapter, {cer_base:.3f} without"


def test_base_clip_is_transcribed_well_by_the_base_model():
    from brogue.clients.eval import error_rates, load_audio, make_runner, transcribe

    mine = [r for r in _demo_manifest() if r["set"] == "base"]
    assert mine
    runner, _ = make_runner(MODEL_DIR, None, STORE)
    hyps = transcribe(runner, [load_audio(str(CLIPS / r["audio_filepath"]), 16000) for r in mine], 0)
    wer, cer = error_rates([r["text"] for r in mine], hyps)
    assert cer < 0.15, (hyps, cer)
