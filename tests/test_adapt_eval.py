"""`brogue adapt` (train one tenant adapter with NeMo) and `brogue eval` (WER through the exported model).

Nothing here synthesises speech or trains more than a few steps: `brogue adapt` runs on a fresh tiny
model and a few seconds of generated audio; `brogue eval` runs the tiny exported test model.
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
    from brogue.export.nemo_model import fingerprint

    torch.manual_seed(0)
    model = build_model("ctc", d_model=64, n_layers=2, n_heads=2, att_context_size=[8, 1])
    model.save_to(str(tmp_path / "tiny.nemo"))
    manifest = _tone_manifest(tmp_path / "data")
    monkeypatch.chdir(tmp_path)  # the audio paths are relative to data/, the manifest's folder, not the cwd
    res = CliRunner().invoke(app, ["adapt", "--model", str(tmp_path / "tiny.nemo"), "--train", str(manifest),
                                   "--name", "tenant-a", "--dim", "8", "--steps", "3", "--batch-size", "2",
                                   "--store", str(tmp_path / "store"), "--kind", "domain", "--domain-lm", "0.4",
                                   "--speed-perturb", "0.1"])
    assert res.exit_code == 0, res.output
    assert res.output.strip().splitlines()[-1] == "tenant-a@v1"
    entry = tmp_path / "store" / "tenant-a" / "v1"
    w = read_adapter(entry, BaseSpec(fingerprint(model), 2, 64, 8))
    assert w.manifest.kind == "domain" and w.manifest.dim == 8
    # --domain-lm: the manifest's sentences became the entry's domain LM, at that weight
    from brogue.clients.eval import read_manifest
    from brogue.engine.lm import normalise_line, read_text
    assert read_text(w.lm_path) == [normalise_line(r["text"]) for r in read_manifest(manifest)]
    assert w.manifest.lm["weight"] == 0.4
    assert w.down.shape == (2, 8, 64) and w.up.shape == (2, 64, 8)
    assert np.abs(w.up).max() > 0, "the adapter's up projection starts at zero and must have trained"


@pytest.mark.nemo
def test_speed_perturbation_plays_clips_at_rates_within_the_range(tmp_path):
    """--speed-perturb S: NeMo's augmentor, built from the data config, resamples each clip it picks
    to one of five rates in [1 - S, 1 + S] (prob. 0.8), so a clip's length changes by that factor."""
    from nemo.collections.asr.parts.preprocessing.perturb import process_augmentations
    from nemo.collections.asr.parts.preprocessing.segment import AudioSegment
    from omegaconf import OmegaConf

    from brogue.export.adapt import _data_config, train_adapter

    class Model:  # what _data_config reads of a NeMo model
        cfg = OmegaConf.create({"sample_rate": 16000, "labels": list(" abc")})

    assert "augmentor" not in _data_config(Model(), tmp_path / "m.json", 4, 16.0)
    aug = process_augmentations(_data_config(Model(), tmp_path / "m.json", 4, 16.0, speed_perturb=0.2)["augmentor"])
    x = np.random.default_rng(0).standard_normal(16000).astype(np.float32) * 0.1
    lengths = set()
    for _ in range(40):
        seg = AudioSegment(x.copy(), 16000)
        aug.perturb(seg)
        lengths.add(len(seg.samples))
    rates = {round(n / 16000, 2) for n in lengths}  # NeMo resamples to rate * sr: n * rate samples
    assert 16000 in lengths and len(rates) >= 3, rates  # some clips untouched, several rates used
    assert all(0.79 <= r <= 1.21 for r in rates), rates
    with pytest.raises(ValueError, match="speed perturbation"):
        train_adapter(tmp_path / "x.nemo", tmp_path / "m.json", "t", store=tmp_path / "s", speed_perturb=0.5)


@pytest.mark.nemo
def test_adapt_with_distilled_replay_trains_on_both_loaders(tmp_path, monkeypatch):
    """--replay-loss distill: each batch takes the tenant's rows from one loader and the replayed
    rows from another (the whole replay manifest), and every step adds the weighted distillation
    loss of the replayed rows; the entry says so."""
    import torch

    from brogue.export import adapt
    from brogue.export.configs import build_model

    calls = []
    real = adapt.distillation_loss

    def spy(model, adapter, signal, signal_len):  # the real loss, recorded
        loss = real(model, adapter, signal, signal_len)
        calls.append((adapter, signal.shape[0], loss.requires_grad))
        return loss

    monkeypatch.setattr(adapt, "distillation_loss", spy)
    torch.manual_seed(0)
    build_model("ctc", d_model=64, n_layers=2, n_heads=2, att_context_size=[8, 1]).save_to(str(tmp_path / "tiny.nemo"))
    own = _tone_manifest(tmp_path / "own", n=4)
    general = _tone_manifest(tmp_path / "general", n=4)
    args = ["adapt", "--model", str(tmp_path / "tiny.nemo"), "--train", str(own), "--name", "t", "--dim", "8",
            "--steps", "3", "--batch-size", "4", "--store", str(tmp_path / "store"), "--replay", str(general),
            "--replay-fraction", "0.5"]
    res = CliRunner().invoke(app, args + ["--replay-loss", "distill", "--distill-weight", "2"])
    assert res.exit_code == 0, res.output
    assert calls == [("encoder:t", 2, True)] * 3  # one per step, on the 2 replayed rows of each batch
    m = read_adapter(tmp_path / "store" / "t" / "v1", None).manifest
    assert "4 rows; 2 rows of each batch from train.json, distilled to the base's output" in m.description
    res = CliRunner().invoke(app, args + ["--replay-loss", "kl", "--version", "v2"])
    assert res.exit_code == 2 and "replay loss must be 'ctc' or 'distill'" in res.output


@pytest.mark.nemo
@pytest.mark.parametrize("head", ["ctc", "hybrid", "rnnt"])
def test_distillation_loss_is_zero_until_the_adapter_moves_the_output_and_trains_only_the_adapter(head):
    """--replay-loss distill: on replayed rows the loss is how far the adapter moves the model from
    the base model's own output (CTC head: KL per frame; RNNT: encoder outputs). A fresh adapter
    (zero up projection) moves nothing; a trained one does, and only the adapter gets gradients."""
    import torch
    from nemo.collections.common.parts.adapter_modules import LinearAdapterConfig

    from brogue.export.adapt import distillation_loss
    from brogue.export.configs import build_model

    torch.manual_seed(0)
    model = build_model(head, d_model=32, n_layers=2, n_heads=2, att_context_size=[8, 1])
    model.add_adapter(name="encoder:t", cfg=LinearAdapterConfig(in_features=32, dim=4))
    model.set_enabled_adapters(name="encoder:t", enabled=True)
    model.freeze()
    model.unfreeze_enabled_adapters()
    model.train()
    signal = 0.1 * torch.randn(2, 16000)
    lengths = torch.tensor([16000, 9000])
    assert float(distillation_loss(model, "encoder:t", signal, lengths)) == pytest.approx(0.0, abs=1e-6)
    assert model.training, "the model goes back to training mode"
    adapter_params = [p for n, p in model.named_parameters() if ".t." in n or n.endswith(".t")]
    assert adapter_params and all(p.requires_grad for p in adapter_params)
    with torch.no_grad():
        for p in adapter_params:
            p.normal_(0, 0.5)
    loss = distillation_loss(model, "encoder:t", signal, lengths)
    assert float(loss) > 1e-3
    loss.backward()
    assert all(p.grad is None for n, p in model.named_parameters() if not p.requires_grad)
    assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in adapter_params)
    # the adapter is switched back on after the base pass
    assert float(distillation_loss(model, "encoder:t", signal, lengths)) == pytest.approx(float(loss), rel=1e-5)


def test_replay_rows_are_mixed_in_at_the_given_fraction_with_absolute_paths(tmp_path):
    from brogue.export.adapt import training_manifest

    own = _tone_manifest(tmp_path / "own", n=6)
    general = _tone_manifest(tmp_path / "general", n=4)
    out = tmp_path / "mixed.json"
    assert training_manifest(own, out, general, replay_fraction=0.25, seed=3) == (6, 2)
    rows = [json.loads(line) for line in open(out)]
    assert len(rows) == 8 and all(Path(r["audio_filepath"]).is_absolute() for r in rows)
    assert sum("/general/" in r["audio_filepath"] for r in rows) == 2
    assert all(Path(r["audio_filepath"]).is_file() for r in rows)
    assert training_manifest(own, out) == (6, 0)  # no replay: the tenant's rows alone
    with pytest.raises(ValueError, match="replay fraction"):
        training_manifest(own, out, general, replay_fraction=1.0)


def test_adapt_refuses_a_manifest_with_missing_audio(tmp_path):
    (tmp_path / "m.json").write_text(json.dumps({"audio_filepath": "nope.wav", "duration": 1.0, "text": "a"}) + "\n")
    res = CliRunner().invoke(app, ["adapt", "--model", str(tmp_path / "x.nemo"), "--train", str(tmp_path / "m.json"),
                                   "--name", "t", "--store", str(tmp_path / "store")])
    assert res.exit_code == 2
    assert "nope.wav" in res.output and not (tmp_path / "store").exists()


def test_eval_resolves_relative_paths_and_ends_with_the_score_line(demo_repo, tmp_path, monkeypatch):
    manifest = _tone_manifest(tmp_path / "data")
    monkeypatch.chdir(tmp_path)  # relative audio paths must be read from the manifest's folder, not the cwd
    res = CliRunner().invoke(app, ["eval", str(manifest), "--model-dir", str(demo_repo.model_dir),
                                   "--store", str(demo_repo.store_dir), "--adapter", demo_repo.refs["med"]])
    assert res.exit_code == 0, res.output
    last = res.output.strip().splitlines()[-1]
    assert LAST_LINE.match(last), last
    assert f"adapter {demo_repo.refs['med']}" in res.output


def test_eval_fails_loudly_on_a_missing_adapter(demo_repo, tmp_path):
    manifest = _tone_manifest(tmp_path / "data")
    res = CliRunner().invoke(app, ["eval", str(manifest), "--model-dir", str(demo_repo.model_dir),
                                   "--store", str(demo_repo.store_dir), "--adapter", "nobody@v1"])
    assert res.exit_code == 2 and "nobody" in res.output


def test_eval_by_a_manifest_field_reports_each_group_and_they_add_up(demo_repo, tmp_path):
    """``--by family`` prints one line per voice family, whose WERs weigh back to the whole set's."""
    from brogue.clients.eval import evaluate

    manifest = _tone_manifest(tmp_path / "data")
    rows = [json.loads(line) for line in open(manifest)]
    with open(manifest, "w") as f:
        for i, r in enumerate(rows):
            f.write(json.dumps(dict(r, family="odd" if i % 2 else "even")) + "\n")
    res = CliRunner().invoke(app, ["eval", str(manifest), "--model-dir", str(demo_repo.model_dir),
                                   "--store", str(demo_repo.store_dir), "--by", "family", "--decoder", "greedy"])
    assert res.exit_code == 0, res.output
    lines = res.output.strip().splitlines()
    assert [ln.split(":")[0].strip() for ln in lines if ln.startswith("  family ")] == ["family even", "family odd"]
    assert all("2 utterances, WER " in ln for ln in lines if ln.startswith("  family "))
    r = evaluate(manifest, model_dir=demo_repo.model_dir, store=demo_repo.store_dir, decoder="greedy")
    groups = r.breakdown("family")
    words = {k: sum(len(r.refs[i].split()) for i in range(len(rows)) if (i % 2 == 1) == (k == "odd"))
             for k in groups}
    total = sum(g["wer"] * words[k] for k, g in groups.items()) / sum(words.values())
    assert abs(total - r.wer) < 1e-9


def test_eval_by_a_field_no_row_has_fails_loudly(demo_repo, tmp_path):
    manifest = _tone_manifest(tmp_path / "data")
    res = CliRunner().invoke(app, ["eval", str(manifest), "--model-dir", str(demo_repo.model_dir),
                                   "--store", str(demo_repo.store_dir), "--by", "family"])
    assert res.exit_code == 2 and "no row of the manifest has a 'family' field" in res.output
