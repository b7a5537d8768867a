"""One copy of the weights on disk and in memory, latencies loaded when served, and the refusals.

A small multi-latency RNNT model takes the same export path as NVIDIA's 114 M and 0.6 B models
(``recipes/nvidia_shapes.py``): every graph in one external-data file, shared by the sessions.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from brogue.engine.runner import StreamingRunner
from brogue.engine.weights import SharedWeights, WeightsError
from brogue.export.configs import build_model
from brogue.export.nemo_export import ExportError, base_state, export_model
from nemo_reference import make_talkative, nemo_streaming

pytestmark = pytest.mark.nemo

CONTEXTS = [[16, 7], [16, 3], [16, 1], [16, 0]]


@pytest.fixture(scope="module")
def multi(tmp_path_factory):
    """An RNNT model with four latencies (eight encoder graphs), big enough for RSS to tell copies
    apart (about 46 MB of weights), exported."""
    torch.manual_seed(0)
    model = build_model("rnnt", d_model=320, n_layers=4, n_heads=4, att_context_size=CONTEXTS,
                        pred_hidden=128, joint_hidden=128)
    make_talkative(model)
    out = tmp_path_factory.mktemp("multi") / "m"
    meta = export_model(model, out, max_adapter_dim=16)
    return model, out, meta


def _weight_bytes(model) -> int:
    return sum(t.numel() * t.element_size() for t in base_state(model).values())


def test_every_graph_references_the_one_weights_file(multi):
    import onnx
    from onnx import TensorProto

    model, out, meta = multi
    graphs = [f for f in meta["files"] if f.endswith(".onnx")]
    assert len(graphs) == 10  # 4 latencies x (first, steady) + RNNT decoder and joint
    index = json.loads((out / "weights.json").read_text())
    shared = set()
    for g in graphs:
        proto = onnx.load(str(out / g), load_external_data=False)
        external = [t for t in proto.graph.initializer if t.data_location == TensorProto.EXTERNAL]
        assert external, g
        for t in external:
            info = {e.key: e.value for e in t.external_data}
            assert info["location"] == "weights.bin", (g, t.name)
            assert int(info["offset"]) == index["tensors"][t.name]["offset"]
            shared.add(t.name)
        assert sorted(t.name for t in external) == sorted(index["graphs"][g])
        # what stays inline is small: structure, not weights
        assert (out / g).stat().st_size < 0.2 * _weight_bytes(model), g
    # Every encoder graph uses the same tensors (the same weights), stored once.
    enc = [set(index["graphs"][g]) for g in graphs if g.startswith("encoder")]
    assert all(e == enc[0] for e in enc)
    size = (out / "weights.bin").stat().st_size
    assert size == meta["weights"]["bytes"] == index["bytes"]
    assert size <= 1.2 * _weight_bytes(model), (size, _weight_bytes(model))
    assert not list(out.parent.glob(".m.partial-*")), "the staging folder is left behind"


def test_shared_weights_give_the_same_tokens_as_nemo_at_every_latency(multi):
    model, out, meta = multi
    runner = StreamingRunner(out)
    audio = (np.random.default_rng(5).standard_normal(int(2.7 * 16000)) * 0.1).astype(np.float32)
    for ctx in CONTEXTS:
        model.encoder.set_default_att_context_size(ctx)
        want, _ = nemo_streaming(model, audio)
        (st,) = runner.transcribe([audio], latency=f"{ctx[0]}_{ctx[1]}")
        assert st.tokens == want, ctx
    assert sum(meta["checks"][k] < 1e-3 for k in ("encoder_max_abs_diff",)) == 1


_RSS_PROBE = textwrap.dedent("""
    import json, sys, psutil
    from brogue.engine.runner import StreamingRunner
    p = psutil.Process()
    before = p.memory_info().rss
    runner = StreamingRunner(sys.argv[1], latencies=sys.argv[2] or None, weights=sys.argv[3])
    print(json.dumps({"added": p.memory_info().rss - before, "sessions": len(runner.encoder._sessions)}))
""")


def _rss_added(out: Path, latencies: str, weights: str = "shared") -> dict:
    r = subprocess.run([sys.executable, "-c", _RSS_PROBE, str(out), latencies, weights], capture_output=True,
                       text=True, check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_sessions_share_one_copy_in_memory_and_load_only_served_latencies(multi):
    model, out, _ = multi
    w = _weight_bytes(model)
    one, every = _rss_added(out, "16_7"), _rss_added(out, "")
    assert one["sessions"] == 2 and every["sessions"] == 8
    # The same probe sees the copies when each session holds its own weights (ORT's default)...
    own_one, own_every = _rss_added(out, "16_7", "private"), _rss_added(out, "", "private")
    print(f"weights {w / 1e6:.1f} MB; RSS added, shared: 1 latency {one['added'] / 1e6:.1f} MB, 4 latencies "
          f"{every['added'] / 1e6:.1f} MB; private: {own_one['added'] / 1e6:.1f} / {own_every['added'] / 1e6:.1f} MB")
    assert own_every["added"] - own_one["added"] > 6 * 0.8 * w
    # ... while shared, six more sessions cost their graphs' structure, not the weights again.
    assert every["added"] - one["added"] < 6 * 0.3 * w
    assert every["added"] < 1.5 * w + 60e6


def test_an_unserved_latency_is_refused_with_the_served_ones(multi):
    _, out, _ = multi
    runner = StreamingRunner(out, latencies="16_3,16_0")
    assert set(runner.encoder._sessions) == {"encoder.16_3.onnx", "encoder_first.16_3.onnx", "encoder.16_0.onnx",
                                              "encoder_first.16_0.onnx"}
    assert runner.open(1).latency.name == "16_3"  # the model's default (16_7) is not served
    with pytest.raises(ValueError, match=r"latency '16_7' is not served here; served latencies: 16_3, 16_0"):
        runner.open(2, latency="16_7")
    with pytest.raises(ValueError, match=r"'9_9' is not in this model"):
        runner.open(3, latency="9_9")
    with pytest.raises(ValueError, match=r"not in this model; it has"):
        StreamingRunner(out, latencies="16_7,4_4")


def test_truncated_or_corrupt_weights_are_refused_at_load(multi, tmp_path):
    _, out, _ = multi
    bad = tmp_path / "bad"
    shutil.copytree(out, bad)
    data = bytearray((bad / "weights.bin").read_bytes())
    data[len(data) // 2] ^= 0x40  # one flipped bit
    (bad / "weights.bin").write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="SHA-256 .* the file is corrupt"):
        StreamingRunner(bad)
    (bad / "weights.bin").write_bytes(bytes(data[: len(data) - 1000]))
    with pytest.raises(WeightsError, match="truncated"):
        SharedWeights(bad, verify=False)
    (bad / "weights.json").unlink()
    with pytest.raises(FileNotFoundError, match="weights.json"):  # listed in model.json's files
        StreamingRunner(bad)


def test_a_disk_too_small_fails_before_writing(multi, tmp_path, monkeypatch):
    model, _, _ = multi
    real = shutil.disk_usage

    def small(path):
        u = real(path)
        return type(u)(u.total, u.total - 1000, 1000)

    monkeypatch.setattr(shutil, "disk_usage", small)
    with pytest.raises(ExportError, match=r"not enough disk space .* needs about .* GB .* nothing was written"):
        export_model(model, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_a_model_that_is_not_cache_aware_is_refused(tmp_path):
    torch.manual_seed(0)
    offline = build_model("ctc", d_model=64, n_layers=2, n_heads=2, att_context_size=[-1, -1])
    with pytest.raises(ExportError, match=r"attention context \[-1, -1\] is unlimited: this is an offline model"):
        export_model(offline, tmp_path / "a")
    (tmp_path / "junk.nemo").write_bytes(b"not a tar file")
    with pytest.raises(ExportError, match="junk.nemo: not a NeMo model that can be restored"):
        export_model(tmp_path / "junk.nemo", tmp_path / "b")
