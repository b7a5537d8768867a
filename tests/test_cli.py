"""The ``brogue`` command: export, export-adapter, and a clear refusal to build TensorRT plans here."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from brogue.adapters import BaseSpec, read_adapter
from brogue.cli import app
from brogue.export.configs import build_model
from brogue.export.tensorrt import TensorRTUnavailable, build_plans
from nemo_reference import random_adapters

pytestmark = pytest.mark.nemo


@pytest.fixture(scope="module")
def nemo_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    torch.manual_seed(0)
    model = build_model("hybrid", d_model=64, n_layers=2, n_heads=2, att_context_size=[16, 7])
    random_adapters(model, ["acc"], dim=8)
    model.save_adapters(str(d / "acc.pt"), name="encoder:acc")
    model.save_to(str(d / "base.nemo"))
    return d


def test_export_and_export_adapter(nemo_files, tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["export", str(nemo_files / "base.nemo"), "--out", str(tmp_path / "m"),
                              "--head", "ctc", "--max-adapter-dim", "16"])
    assert res.exit_code == 0, res.output
    meta = json.loads((tmp_path / "m" / "model.json").read_text())
    assert meta["head"] == "ctc" and meta["source"]["model_head"] == "hybrid"

    res = runner.invoke(app, ["export-adapter", str(nemo_files / "acc.pt"), "--model", str(nemo_files / "base.nemo"),
                              "--store", str(tmp_path / "store"), "--version", "v1", "--kind", "accent"])
    assert res.exit_code == 0, res.output
    assert res.stdout.strip().splitlines()[-1] == "acc@v1"
    w = read_adapter(tmp_path / "store" / "acc" / "v1", BaseSpec(meta["fingerprint"], 2, 64, 16))
    assert w.manifest.kind == "accent" and w.manifest.dim == 8

    # Entries are immutable: the same name@version again is refused, clearly.
    res = runner.invoke(app, ["export-adapter", str(nemo_files / "acc.pt"), "--model", str(nemo_files / "base.nemo"),
                              "--store", str(tmp_path / "store"), "--version", "v1"])
    assert res.exit_code == 2 and "immutable" in res.output


def test_export_refuses_a_head_the_model_lacks(nemo_files, tmp_path):
    res = CliRunner().invoke(app, ["export", str(nemo_files / "base.nemo"), "--out", str(tmp_path / "m"),
                                   "--head", "tdt"])
    assert res.exit_code == 2 and "cannot serve head 'tdt'" in res.output


def test_tensorrt_plan_step_says_why_it_cannot_build_here(nemo_files, tmp_path):
    """This host has no GPU (and no tensorrt package): the plan step must say so, not crash."""
    with pytest.raises(TensorRTUnavailable, match="(?i)tensorrt|gpu"):
        build_plans(tmp_path)
    res = CliRunner().invoke(app, ["export", str(nemo_files / "base.nemo"), "--out", str(tmp_path / "m"),
                                   "--tensorrt"])
    assert res.exit_code == 2
    assert "TensorRT plan not built" in res.output
    assert (tmp_path / "m" / "model.json").is_file()  # the ONNX export itself succeeded
