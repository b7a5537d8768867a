"""One copy of the weights on disk and in memory, latencies loaded when served, and the refusals.

A small multi-latency RNNT model takes the same export path as NVIDIA's 114 M and 0.6 B models
(``recipes/nvidia_shapes.py``): every graph in one external-data file, shared by the sessions.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from brogue.engine.runner import StreamingRunner
from brogue.engine.weights import SharedWeights, WeightsError
from brogue.export.configs import build_model
from brogue.export.nemo_export import export_model
from brogue.export.nemo_model import ExportError, base_state
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


def _rss_added(out: Path, latencies: str, weights: str = "shared") -> dict:
    """RSS a runner adds in a fresh process: the probe ``brogue bench``'s real-size table uses."""
    from brogue.bench.real_sizes import rss

    r = rss(out, latencies, weights)
    return {"added": r["rss_added"], "sessions": r["sessions"]}


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
    assert set(runner.encoder.backend.sessions) == {"encoder.16_3.onnx", "encoder_first.16_3.onnx", "encoder.16_0.onnx",
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
    from omegaconf import OmegaConf

    from brogue.export.configs import model_class, streaming_model_config

    cfg = streaming_model_config("ctc", d_model=64, n_layers=2, n_heads=2)
    cfg["encoder"].update(att_context_size=[-1, -1], att_context_style="regular", causal_downsampling=False,
                          conv_context_size=None)  # NeMo's offline FastConformer
    torch.manual_seed(0)
    offline = model_class("ctc", False)(cfg=OmegaConf.create(cfg), trainer=None)
    with pytest.raises(ExportError, match=r"attention context \[-1, -1\] is unlimited: this is an offline model"):
        export_model(offline, tmp_path / "a")
    (tmp_path / "junk.nemo").write_bytes(b"not a tar file")
    with pytest.raises(ExportError, match="junk.nemo: not a NeMo model that can be restored"):
        export_model(tmp_path / "junk.nemo", tmp_path / "b")


def test_graphs_with_one_file_per_tensor_are_merged_without_collisions(multi, tmp_path):
    """Above 2 GB, torch writes each graph's tensors (initializers and Constant values) to one file per
    tensor beside the graph, named after the tensor, so graphs exported into one folder overwrite each
    other's files. The same layout, made here with onnx's own converter from two latencies' graphs,
    goes through the weights writer into one shared file; ONNX Runtime then gives the same outputs."""
    import onnx
    from onnx.external_data_helper import convert_model_to_external_data

    from brogue.engine.ort_session import make_session
    from brogue.export.weights import WeightsWriter

    _, out, meta = multi
    graphs = ["encoder.16_7.onnx", "encoder_first.16_0.onnx"]
    scratch = {}
    for g in graphs:
        proto = onnx.load(str(out / g))  # weights read in from weights.bin
        d = tmp_path / g.replace(".onnx", "")
        d.mkdir()
        convert_model_to_external_data(proto, all_tensors_to_one_file=False, size_threshold=0)
        onnx.save(proto, str(d / "graph.onnx"))
        scratch[g] = d
    a, b = ({p.name for p in scratch[g].iterdir()} - {"graph.onnx"} for g in graphs)
    assert len(a & b) > 10  # the same file names in both folders: one folder would have collided
    merged = tmp_path / "merged"
    merged.mkdir()
    writer = WeightsWriter(merged)
    for g in graphs:
        writer.add_graph(scratch[g] / "graph.onnx", g)
    summary = writer.finish()
    assert summary["bytes"] <= 1.01 * meta["weights"]["bytes"]
    rng = np.random.default_rng(0)
    for g in graphs:
        ref = make_session(out / g, weights=SharedWeights(out))
        got = make_session(merged / g, weights=SharedWeights(merged))
        ch, tm = (tuple(x) for x in (meta["encoder"]["cache_last_channel"], meta["encoder"]["cache_last_time"]))
        L, d, r = meta["encoder"]["n_layers"], meta["encoder"]["d_model"], meta["adapters"]["max_dim"]
        T = 73 if g.startswith("encoder.") else 57
        feeds = {"audio_signal": rng.standard_normal((2, 80, T)).astype(np.float32),
                 "length": np.full(2, T, np.int64),
                 "cache_last_channel": rng.standard_normal((2, *ch)).astype(np.float32),
                 "cache_last_time": rng.standard_normal((2, *tm)).astype(np.float32),
                 "cache_last_channel_len": np.array([0, 5], np.int64), "adapter_ids": np.array([0, 1], np.int64),
                 "adapter_ln_weight": np.ones((2, L, d), np.float32),
                 "adapter_ln_bias": np.zeros((2, L, d), np.float32),
                 "adapter_down": rng.standard_normal((2, L, r, d)).astype(np.float32) * 0.1,
                 "adapter_up": rng.standard_normal((2, L, d, r)).astype(np.float32) * 0.1}
        for x, y in zip(ref.run(None, feeds), got.run(None, feeds)):
            np.testing.assert_array_equal(x, y)


def test_an_unknown_encoder_is_refused(tmp_path):
    """A real NeMo CTC model whose encoder is not a FastConformer (a Jasper-style ConvASREncoder)."""
    from omegaconf import OmegaConf

    from brogue.export.configs import model_class, streaming_model_config

    cfg = streaming_model_config("ctc", d_model=64, n_layers=2, n_heads=2)
    cfg["encoder"] = {"_target_": "nemo.collections.asr.modules.ConvASREncoder", "feat_in": 80, "activation": "relu",
                      "conv_mask": True, "jasper": [{"filters": 64, "repeat": 1, "kernel": [11], "stride": [2],
                                                     "dilation": [1], "dropout": 0.0, "residual": False,
                                                     "separable": True}]}
    model = model_class("ctc", False)(cfg=OmegaConf.create(cfg), trainer=None)
    with pytest.raises(ExportError, match="ConvASREncoder is not a cache-aware streaming encoder"):
        export_model(model, tmp_path / "out")
    assert not (tmp_path / "out").exists()
