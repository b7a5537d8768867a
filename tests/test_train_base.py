"""recipes/train_base.py: the demo base model's training run, on a tiny model and generated audio
(a few steps; the real budgets are in recipes/make_demo.sh)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "recipes"))

import train_base  # noqa: E402

pytestmark = pytest.mark.nemo


def _manifest(folder: Path, name: str, n: int, seed: int) -> Path:
    """``n`` rows of generated audio (chirps over noise), audio paths relative to ``folder``."""
    rng = np.random.default_rng(seed)
    (folder / name).mkdir(parents=True, exist_ok=True)
    texts = ["a cat sat", "the dog ran", "a red hat", "go home now"]
    with open(folder / f"{name}.json", "w") as f:
        for i in range(n):
            t = np.arange(int(16000 * (0.9 + 0.1 * i))) / 16000
            x = 0.3 * np.sin(2 * np.pi * (150 + 250 * i + 300 * t) * t) + 0.02 * rng.standard_normal(len(t))
            sf.write(folder / name / f"{i}.wav", x.astype(np.float32), 16000, subtype="PCM_16")
            f.write(json.dumps({"audio_filepath": f"{name}/{i}.wav", "duration": len(t) / 16000,
                                "text": texts[i % len(texts)]}) + "\n")
    return folder / f"{name}.json"


@pytest.fixture()
def tiny(tmp_path):
    import torch

    from brogue.export.configs import build_model

    torch.manual_seed(0)
    model = build_model("ctc", d_model=32, n_layers=1, n_heads=2, att_context_size=[8, 1])
    model.save_to(str(tmp_path / "tiny.nemo"))
    return model, tmp_path / "tiny.nemo"


def test_spec_augment_masks_with_the_features_mean_not_zero(tiny, tmp_path):
    """The demo's log-mels are un-normalised (mean far below 0): a masked cell must read as the mean,
    not as NeMo's default 0.0, which would be a loud burst."""
    import torch

    model, _ = tiny
    data = tmp_path / "data"
    _manifest(data, "a", 4, 0)
    absolute = tmp_path / "abs.json"  # feature_mean_std reads the audio paths as given
    absolute.write_text("".join(json.dumps({**r, "audio_filepath": str(data / r["audio_filepath"])}) + "\n"
                                for r in map(json.loads, open(data / "a.json"))))
    mu, _ = train_base.feature_mean_std(model, absolute)
    assert mu < -2
    sa = train_base.add_spec_augment(model, absolute, "2,10,3,0.1")
    assert model.spec_augmentation is sa
    x, _ = sf.read(data / "a" / "3.wav", dtype="float32")
    f, fl = model.preprocessor(input_signal=torch.from_numpy(x)[None], length=torch.tensor([len(x)]))
    torch.manual_seed(1)
    g = sa(input_spec=f.clone(), length=fl)
    masked = g != f
    assert masked.any(), "nothing was masked"
    assert torch.allclose(g[masked], torch.full_like(g[masked], mu))
    assert masked.all(dim=1).any() and masked.all(dim=2).any()  # whole time columns and whole mel rows


def test_a_continued_budget_trains_on_every_manifest_and_saves_without_spec_augment(tiny, tmp_path, capsys):
    from nemo.core import ModelPT

    _, init = tiny
    data = tmp_path / "data"
    a, b = _manifest(data, "part1", 3, 1), _manifest(data, "part2", 2, 2)
    _manifest(data, "base_test", 2, 3)  # the progress probe's split
    out = tmp_path / "out" / "demo.nemo"
    train_base.main(["--data", str(data), "--out", str(out), "--init", str(init), "--train", a.name, b.name,
                     "--max-steps", "2", "--batch-size", "2", "--lr", "1e-4", "--warmup", "1",
                     "--spec-augment", "2,5,2,0.05", "--probe-every", "0", "--minutes", "5"])
    assert "SpecAugment this run" in capsys.readouterr().out
    stats = json.loads(Path(str(out) + ".train.json").read_text())
    assert stats["steps"] == 2 and stats["train"] == ["part1.json", "part2.json"]
    assert stats["spec_augment"] == "2,5,2,0.05"
    rows = [json.loads(l) for m in (a, b) for l in open(m)]
    assert stats["train_hours_audio"] == round(sum(r["duration"] for r in rows) / 3600, 3)
    # the run's manifest holds both parts, with paths that resolve from anywhere
    texts = [json.loads(l)["audio_filepath"] for l in open(str(out) + ".train_manifest.json")]
    assert {Path(p).name for p in texts} == {"0.wav", "1.wav", "2.wav"} and all(Path(p).is_file() for p in texts)
    assert len(texts) == 40 * len(rows)
    saved = ModelPT.restore_from(str(out), map_location="cpu")
    assert saved.spec_augmentation is None and "spec_augment" not in saved.cfg


def test_grown_layers_start_as_the_old_output_renormalised(tiny):
    """A grown layer's residual branches start at zero: the grown encoder's output is the old one's
    through the last layer's final LayerNorm, and nothing else of the old model changes."""
    import torch

    model, _ = tiny
    with torch.no_grad():  # a trained LayerNorm is no identity; a fresh one nearly is
        model.encoder.layers[-1].norm_out.weight.uniform_(0.5, 2.0)
        model.encoder.layers[-1].norm_out.bias.normal_(0.0, 0.5)
    grown = train_base.grow_layers(model, 2)
    assert grown.cfg.encoder.n_layers == 3 and len(grown.encoder.layers) == 3
    assert model.cfg.encoder.n_layers == 1  # the old model is left as it was
    old_sd = model.state_dict()
    assert all(torch.equal(v, old_sd[k]) for k, v in grown.state_dict().items() if k in old_sd)
    model.eval(), grown.eval()
    torch.manual_seed(2)
    x, n = torch.randn(2, 80, 120), torch.tensor([120, 96])
    with torch.no_grad():
        a, la = model.encoder(audio_signal=x, length=n)
        b, lb = grown.encoder(audio_signal=x, length=n)
        norm = model.encoder.layers[-1].norm_out
        twice = norm(norm(a.transpose(1, 2))).transpose(1, 2)
    assert torch.equal(la, lb)
    assert torch.allclose(b, twice, atol=1e-5)
    assert not torch.allclose(b, a, atol=1e-3)  # the renormalisation is real, not a no-op
    with pytest.raises(ValueError):
        train_base.grow_layers(model, 0)
    with pytest.raises(SystemExit):
        train_base.main(["--data", "x", "--out", "y.nemo", "--grow-layers", "2"])
