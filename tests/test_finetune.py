"""`brogue finetune` (train every weight of a base model, export it, publish it as a model version).

Nothing here trains more than a few steps: a fresh tiny model on a few seconds of generated audio.
The refusals run no model at all: they must come before any training.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from brogue.cli import app
from brogue.models import ModelError, ModelRef, ModelStore
from test_adapt_eval import _tone_manifest


def _tiny_nemo(path: Path, head: str = "ctc", d_model: int = 64):
    import torch

    from brogue.export.configs import build_model

    torch.manual_seed(0)
    model = build_model(head, d_model=d_model, n_layers=2, n_heads=2, att_context_size=[8, 1])
    if path is not None:
        model.save_to(str(path))
    return model


def _parameters(nemo: Path) -> dict:
    from brogue.export.nemo_model import load_nemo

    return {n: p.detach().clone() for n, p in load_nemo(nemo).named_parameters()}


@pytest.mark.nemo
def test_finetune_trains_every_weight_exports_and_publishes(tmp_path, monkeypatch):
    import torch

    from brogue.export.finetune import finetune
    from brogue.export.nemo_model import fingerprint

    base_fp = fingerprint(_tiny_nemo(tmp_path / "tiny.nemo"))
    manifest = _tone_manifest(tmp_path / "data")
    monkeypatch.chdir(tmp_path)  # the audio paths are relative to data/, the manifest's folder, not the cwd
    r = finetune(tmp_path / "tiny.nemo", manifest, "ft", out_nemo=tmp_path / "out" / "ft.nemo",
                 export_dir=tmp_path / "out" / "ft", store=tmp_path / "store", steps=3, batch_size=2, lr=1e-3,
                 speed_perturb=0.1, progress=False)
    assert r.steps == 3 and r.seconds > 0
    assert math.isfinite(r.first_loss) and math.isfinite(r.last_loss) and r.first_loss > 0
    durations = [json.loads(line)["duration"] for line in open(manifest)]
    assert r.train_hours == pytest.approx(sum(durations) / 3600)

    # every weight trained, and the .nemo holds the trained weights
    before, after = _parameters(tmp_path / "tiny.nemo"), _parameters(r.nemo)
    assert before.keys() == after.keys()
    unchanged = [n for n in before if torch.equal(before[n], after[n])]
    assert not unchanged, unchanged
    assert r.trainable == sum(p.numel() for p in before.values())
    assert r.parent_fingerprint == base_fp and r.fingerprint != base_fp

    # the export, and the store entry made from it
    meta = json.loads((tmp_path / "out" / "ft" / "model.json").read_text())
    assert meta["fingerprint"] == r.fingerprint and meta["name"] == "ft"
    m = ModelStore(tmp_path / "store").read(ModelRef("ft", "v1"), verify=True)
    assert m == r.manifest
    assert m.fingerprint == meta["fingerprint"] and m.kind == "full" and m.parent_fingerprint == base_fp
    assert m.files.keys() == {*meta["files"], "model.json"}
    assert m.source["steps"] == 3 and m.source["train_manifest"] == "train.json"
    assert m.source["first_loss"] == pytest.approx(r.first_loss, abs=1e-3) and m.source["speed_perturb"] == 0.1
    assert "full fine-tune of tiny.nemo: 3 steps on train.json" in m.description

    # entries are immutable: the same name@version again is refused before anything is written
    with pytest.raises(ModelError) as e:
        finetune(tmp_path / "tiny.nemo", manifest, "ft", out_nemo=tmp_path / "ft2.nemo",
                 export_dir=tmp_path / "ft2", store=tmp_path / "store", steps=3)
    assert e.value.code == "exists" and not (tmp_path / "ft2.nemo").exists()


@pytest.mark.nemo
def test_finetune_cli_with_distilled_replay_and_a_frozen_prefix(tmp_path, monkeypatch):
    """--replay-loss distill: every step adds the distillation loss of the replayed rows (2 of each
    batch of 4) against the frozen base; --freeze keeps those weights as they were; without
    --out-nemo/--export-dir the files go to NAME-VERSION.nemo and NAME-VERSION/ in the cwd."""
    import torch

    from brogue.export import finetune as ft
    from brogue.export.nemo_model import fingerprint

    calls = []
    real = ft.distillation_loss

    def spy(model, reference, signal, signal_len):  # the real loss, recorded
        loss = real(model, reference, signal, signal_len)
        calls.append((signal.shape[0], loss.requires_grad, float(loss)))
        return loss

    monkeypatch.setattr(ft, "distillation_loss", spy)
    base_fp = fingerprint(_tiny_nemo(tmp_path / "tiny.nemo"))
    own = _tone_manifest(tmp_path / "own", n=4)
    general = _tone_manifest(tmp_path / "general", n=4)
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(app, ["finetune", "--model", str(tmp_path / "tiny.nemo"), "--train", str(own),
                                   "--name", "ft", "--version", "v2", "--steps", "3", "--batch-size", "4",
                                   "--lr", "1e-3", "--replay", str(general), "--replay-fraction", "0.5",
                                   "--replay-loss", "distill", "--distill-weight", "2",
                                   "--freeze", "encoder.pre_encode", "--model-repository", str(tmp_path / "repo")])
    assert res.exit_code == 0, res.output
    assert res.output.strip().splitlines()[-1] == "ft@v2"
    assert [(n, grad) for n, grad, _ in calls] == [(2, True)] * 3  # one per step, on the 2 replayed rows
    # the first step starts from the base itself (layer norm: no running statistics that the
    # training pass before it could move)
    assert calls[0][2] == pytest.approx(0.0, abs=1e-5) and calls[-1][2] > 0
    assert (tmp_path / "ft-v2.nemo").is_file() and (tmp_path / "ft-v2" / "model.json").is_file()
    m = ModelStore(tmp_path / "repo" / "models").read(ModelRef("ft", "v2"), verify=True)
    assert m.parent_fingerprint == base_fp and m.fingerprint != base_fp
    assert m.source["replay_loss"] == "distill" and m.source["freeze"] == ["encoder.pre_encode"]
    assert "2 rows of each batch from train.json, distilled to the base's output" in m.description
    before, after = _parameters(tmp_path / "tiny.nemo"), _parameters(tmp_path / "ft-v2.nemo")
    frozen = [n for n in before if n.startswith("encoder.pre_encode")]
    assert frozen and all(torch.equal(before[n], after[n]) for n in frozen)
    assert all(not torch.equal(before[n], after[n]) for n in before if n not in frozen)


@pytest.mark.nemo
@pytest.mark.parametrize("head", ["ctc", "hybrid", "rnnt"])
def test_distillation_loss_is_zero_for_the_base_and_grows_as_the_weights_move(head):
    """The distilled replay's loss: how far the model's output (CTC head: KL per frame; RNNT:
    encoder outputs) is from a frozen copy of the base's. Zero before training; once the weights
    move it grows, and only the model (not the reference) gets gradients."""
    import torch

    from brogue.export.finetune import FrozenReference, distillation_loss

    model = _tiny_nemo(None, head, d_model=32)
    reference = FrozenReference(model)
    assert (reference.head is None) == (head == "rnnt")
    model.train()
    signal = 0.1 * torch.randn(2, 16000)
    lengths = torch.tensor([16000, 9000])
    assert float(distillation_loss(model, reference, signal, lengths)) == pytest.approx(0.0, abs=1e-6)
    assert model.training, "the model goes back to training mode"
    with torch.no_grad():
        for p in model.encoder.layers[-1].parameters():
            p.add_(0.1 * torch.randn_like(p))
    loss = distillation_loss(model, reference, signal, lengths)
    assert float(loss) > 1e-3
    loss.backward()
    assert all(p.grad is None and not p.requires_grad for p in reference.parameters())
    assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in model.encoder.layers[-1].parameters())


def test_bad_name_existing_entry_and_bad_manifest_are_refused_before_loading(tmp_path):
    """No model is loaded (the .nemo path does not even exist) when the request cannot succeed."""
    from brogue.export.finetune import finetune

    manifest = _tone_manifest(tmp_path / "data", n=1)
    kw = dict(out_nemo=tmp_path / "ft.nemo", export_dir=tmp_path / "ft", store=tmp_path / "store")
    with pytest.raises(ValueError, match="invalid model name 'Bad Name'"):
        finetune(tmp_path / "missing.nemo", manifest, "Bad Name", **kw)
    with pytest.raises(ValueError, match="replay loss must be 'ctc' or 'distill'"):
        finetune(tmp_path / "missing.nemo", manifest, "ft", replay_loss="kl", **kw)
    with pytest.raises(FileNotFoundError, match="no such manifest"):
        finetune(tmp_path / "missing.nemo", tmp_path / "nope.json", "ft", **kw)
    (tmp_path / "store" / "ft" / "v1").mkdir(parents=True)
    with pytest.raises(ModelError, match="already in the store") as e:
        finetune(tmp_path / "missing.nemo", manifest, "ft", **kw)
    assert e.value.code == "exists"
    (tmp_path / "ft.nemo").write_bytes(b"not a model")  # a .nemo is never overwritten unless asked
    with pytest.raises(FileExistsError, match="ft.nemo exists"):
        finetune(tmp_path / "missing.nemo", manifest, "ft", version="v2", **kw)
    assert not (tmp_path / "ft").exists() and not (tmp_path / "store" / "ft" / "v2").exists()


def test_cli_refuses_a_manifest_with_missing_audio_and_a_taken_version(tmp_path):
    (tmp_path / "m.json").write_text(json.dumps({"audio_filepath": "nope.wav", "duration": 1.0, "text": "a"}) + "\n")
    args = ["finetune", "--model", str(tmp_path / "x.nemo"), "--train", str(tmp_path / "m.json"), "--name", "ft",
            "--model-repository", str(tmp_path / "repo"), "--out-nemo", str(tmp_path / "ft.nemo")]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2
    assert "nope.wav" in res.output and not (tmp_path / "ft.nemo").exists() and not (tmp_path / "repo").exists()
    (tmp_path / "repo" / "models" / "ft" / "v1").mkdir(parents=True)
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2 and "exists: model ft@v1 is already in the store" in res.output
    res = CliRunner().invoke(app, args + ["--version", "v/1"])
    assert res.exit_code == 2 and "invalid model version 'v/1'" in res.output


def test_cli_help_lists_the_options():
    res = CliRunner().invoke(app, ["finetune", "--help"], env={"COLUMNS": "200", "TERMINAL_WIDTH": "200"})
    assert res.exit_code == 0, res.output
    for option in ("--model", "--train", "--name", "--version", "--steps", "--batch-size", "--lr", "--warmup",
                   "--max-duration", "--replay", "--replay-fraction", "--replay-loss", "--distill-weight",
                   "--speed-perturb", "--freeze", "--out-nemo", "--export-dir", "--model-repository", "--admin",
                   "--token", "--rollout", "--no-rollout", "--accelerator", "--threads", "--seed"):
        assert f"{option} " in res.output, option
    assert "finetune" in CliRunner().invoke(app, ["--help"], env={"COLUMNS": "200"}).output
