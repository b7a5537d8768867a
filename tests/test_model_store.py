"""The model store (brogue.models): publishing, uploads that are cut short or corrupted, reading
entries back; the serving footprint and the memory budget; model references in the tenants file."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from brogue.models import (LoadedModel, MemoryBudget, ModelError, ModelManifest, ModelRef, ModelStore, NoRoom,
                           estimate_footprint)
from brogue.models.manifest import FileSpec
from brogue.models.store import export_files

DEMO = Path(__file__).resolve().parent.parent / "model_repo" / "exported" / "demo"
MiB = 1 << 20


@pytest.fixture(scope="module")
def demo_files():
    return export_files(DEMO)


def _stage_all(store, ref, files, skip=(), corrupt=None):
    staging = store.stage(ref, files)
    for name in files:
        if name in skip:
            continue
        data = (DEMO / name).read_bytes()
        if name == corrupt:
            data = data[:-1] + bytes([data[-1] ^ 1])
        staging.write(name, 0, data)
    return staging


def test_publish_read_list_round_trip(tmp_path, demo_files):
    store = ModelStore(tmp_path / "models")
    m = store.publish_dir(DEMO, ModelRef("ward", "v1"), description="d", parent_fingerprint="sha256:" + "0" * 64,
                          source={"steps": 3})
    meta = json.loads((DEMO / "model.json").read_text())
    assert m.fingerprint == meta["fingerprint"] and m.kind == "full" and m.source == {"steps": 3}
    assert set(m.files) == set(demo_files) and "model.json" in m.files and "weights.bin" in m.files
    assert m.size_bytes == sum(p.stat().st_size for p in DEMO.iterdir() if p.is_file())
    back = store.read(ModelRef("ward", "v1"), verify=True)
    assert back == m
    assert [(e.ref, e.error) for e in store.list()] == [(ModelRef("ward", "v1"), None)]
    assert (store.path(m.ref) / "weights.bin").read_bytes() == (DEMO / "weights.bin").read_bytes()
    assert not [p for p in (tmp_path / "models" / "ward").iterdir() if p.name.startswith(".")]
    with pytest.raises(ModelError) as e:
        store.publish_dir(DEMO, ModelRef("ward", "v1"))
    assert e.value.code == "exists"


def test_a_cut_short_upload_is_refused_and_leaves_nothing(tmp_path, demo_files):
    store = ModelStore(tmp_path)
    with pytest.raises(ModelError) as e:
        with _stage_all(store, ModelRef("ward", "v1"), demo_files, skip={"weights.bin"}) as s:
            s.commit()
    assert e.value.code == "incomplete" and "weights.bin" in str(e.value) and "0 of" in str(e.value)
    assert not list((tmp_path / "ward").iterdir())  # the staging folder is gone
    assert store.list() == []


def test_a_corrupted_file_is_refused_by_name(tmp_path, demo_files):
    store = ModelStore(tmp_path)
    with pytest.raises(ModelError) as e:
        with _stage_all(store, ModelRef("ward", "v1"), demo_files, corrupt="encoder.72_5.onnx") as s:
            s.commit()
    assert e.value.code == "hash_mismatch" and "encoder.72_5.onnx" in str(e.value)
    assert store.list() == []


def test_chunks_must_come_in_order_and_within_the_declared_size(tmp_path, demo_files):
    store = ModelStore(tmp_path)
    with store.stage(ModelRef("ward", "v1"), demo_files) as s:
        data = (DEMO / "model.json").read_bytes()
        with pytest.raises(ModelError, match="expected 0") as e:
            s.write("model.json", 10, data[10:])
        assert e.value.code == "incomplete"
        s.write("model.json", 0, data)
        with pytest.raises(ModelError, match="more than the declared"):
            s.write("model.json", len(data), b"x")
        with pytest.raises(ModelError) as e:
            s.write("other.bin", 0, b"x")
        assert e.value.code == "bad_path"


@pytest.mark.parametrize("name", ["../escape", "/etc/passwd", ".hidden", "a/../../b", "manifest.json", "a\\b", ""])
def test_file_names_that_could_escape_the_entry_are_refused(tmp_path, name, demo_files):
    files = dict(demo_files)
    files[name] = FileSpec(1, "0" * 64)
    with pytest.raises(ModelError) as e:
        ModelStore(tmp_path).stage(ModelRef("ward", "v1"), files)
    assert e.value.code == "bad_path"
    assert not (tmp_path / "ward").exists()


def test_files_that_are_not_a_brogue_export_are_refused(tmp_path, demo_files):
    store = ModelStore(tmp_path)
    # model.json lists a graph that was not sent
    files = {k: v for k, v in demo_files.items() if k != "encoder_first.72_5.onnx"}
    with pytest.raises(ModelError) as e:
        with _stage_all(store, ModelRef("ward", "v1"), files) as s:
            s.commit()
    assert e.value.code == "not_a_model" and "encoder_first.72_5.onnx" in str(e.value)
    # the weights are whole and hash as declared, but are not the weights model.json was exported with
    other = tmp_path / "other"
    shutil.copytree(DEMO, other)
    w = bytearray((other / "weights.bin").read_bytes())
    w[100] ^= 1
    (other / "weights.bin").write_bytes(bytes(w))
    with pytest.raises(ModelError) as e:
        store.publish_dir(other, ModelRef("ward", "v2"))
    assert e.value.code == "not_a_model" and "weights.bin" in str(e.value)
    with pytest.raises(ModelError) as e:
        store.stage(ModelRef("ward", "v3"), {"weights.bin": demo_files["weights.bin"]})
    assert e.value.code == "not_a_model"
    assert store.list() == []


def test_a_damaged_entry_reads_as_an_error_and_is_listed_with_it(tmp_path):
    store = ModelStore(tmp_path)
    store.publish_dir(DEMO, ModelRef("ward", "v1"))
    store.publish_dir(DEMO, ModelRef("ward", "v2"))
    p = store.path(ModelRef("ward", "v1")) / "weights.bin"
    p.write_bytes(p.read_bytes()[:-4])
    with pytest.raises(ModelError) as e:
        store.read(ModelRef("ward", "v1"))
    assert e.value.code == "incomplete"
    q = store.path(ModelRef("ward", "v2")) / "encoder.72_5.onnx"
    data = bytearray(q.read_bytes())
    data[-1] ^= 1
    q.write_bytes(bytes(data))
    store.read(ModelRef("ward", "v2"))  # the size is right: only verify reads the bytes
    with pytest.raises(ModelError) as e:
        store.read(ModelRef("ward", "v2"), verify=True)
    assert e.value.code == "hash_mismatch"
    listed = {str(x.ref): x.error.code if x.error else None for x in store.list()}
    assert listed == {"ward@v1": "incomplete", "ward@v2": None}
    with pytest.raises(ModelError) as e:
        store.read(ModelRef("nope", "v1"))
    assert e.value.code == "missing"


def test_manifest_is_checked_when_read(tmp_path):
    store = ModelStore(tmp_path)
    m = store.publish_dir(DEMO, ModelRef("ward", "v1"))
    path = store.path(m.ref) / "manifest.json"
    raw = json.loads(path.read_text())
    raw["files"]["../x"] = {"size_bytes": 1, "sha256": hashlib.sha256(b"x").hexdigest()}
    path.write_text(json.dumps(raw))
    with pytest.raises(ModelError) as e:
        store.read(m.ref)
    assert e.value.code == "bad_path"
    path.write_text("{")
    with pytest.raises(ModelError) as e:
        store.read(m.ref)
    assert e.value.code == "manifest"
    assert ModelManifest.from_json(m.to_json(), "x") == m


def test_model_references():
    assert str(ModelRef.parse("ward@v2")) == "ward@v2"
    with pytest.raises(ValueError, match="invalid model reference"):
        ModelRef.parse("ward")
    with pytest.raises(ValueError, match="invalid model name"):
        ModelRef("Ward", "v1")


# -- footprint and budget -----------------------------------------------------------------------


def test_footprint_adds_up_the_parts_the_engine_allocates():
    meta = json.loads((DEMO / "model.json").read_text())
    f = estimate_footprint(DEMO, max_streams=100, max_batch=10, slots=4, decoder="greedy")
    enc = meta["encoder"]
    row = 4 * (enc["cache_last_channel"][0] * enc["cache_last_channel"][1] * enc["cache_last_channel"][2]
               + enc["cache_last_time"][0] * enc["cache_last_time"][1] * enc["cache_last_time"][2]) + 8
    assert f.state_pool == (100 + 2 * 10) * row
    graphs = 2 * len(meta["latencies"])
    assert f.weights == graphs * meta["weights"]["bytes"]  # private copies: the demo is small
    assert f.bank == 4 * enc["n_layers"] * (2 * enc["d_model"] + 2 * meta["adapters"]["max_dim"] * enc["d_model"]) * 4
    assert f.lm == 0  # greedy: the LM is not loaded
    assert estimate_footprint(DEMO, decoder="auto").lm > 0
    assert f.total == f.weights + f.state_pool + f.bank + f.lm + f.process
    assert estimate_footprint(DEMO, weights="shared").weights == meta["weights"]["bytes"]


def test_budget_unloads_idle_unpinned_versions_least_recently_used_first():
    b = MemoryBudget(1000 * MiB)
    loaded = [LoadedModel("", 300 * MiB, pinned=True),
              LoadedModel("a@v1", 200 * MiB, last_used=5.0),
              LoadedModel("b@v1", 200 * MiB, last_used=1.0),
              LoadedModel("c@v1", 200 * MiB, live=2, last_used=0.0),
              ]
    assert b.plan("d@v1", 100 * MiB, loaded) == []
    assert b.plan("d@v1", 200 * MiB, loaded) == ["b@v1"]  # the least recently used idle one
    assert b.plan("d@v1", 400 * MiB, loaded) == ["b@v1", "a@v1"]
    with pytest.raises(NoRoom) as e:  # c is streaming, the base is pinned: 500 MiB is the most room
        b.plan("d@v1", 600 * MiB, loaded)
    assert "600 MiB" in str(e.value) and "c@v1 (200 MiB, 2 live)" in str(e.value) and "pinned" in str(e.value)
    loaded[1].pinned = True
    assert b.plan("d@v1", 300 * MiB, loaded) == ["b@v1"]
    with pytest.raises(NoRoom):
        b.plan("d@v1", 400 * MiB, loaded)


def test_check_alone_counts_only_pinned_versions():
    b = MemoryBudget(1000 * MiB)
    loaded = [LoadedModel("", 300 * MiB, pinned=True), LoadedModel("a@v1", 600 * MiB, live=3)]
    b.check_alone("d@v1", 700 * MiB, loaded)  # a is not pinned: it may be unloaded once idle
    with pytest.raises(NoRoom) as e:
        b.check_alone("d@v1", 701 * MiB, loaded)
    assert "701 MiB" in str(e.value) and "1000 MiB budget" in str(e.value) and "1 MiB short" in str(e.value)
    with pytest.raises(ValueError):
        MemoryBudget(0)


# -- the tenants file --------------------------------------------------------------------------


def test_tenants_name_model_versions_and_pins(tmp_path):
    from brogue.server.tenants import TenantRegistry, key_hash

    path = tmp_path / "tenants.toml"
    path.write_text(f'admin_token_sha256 = "{key_hash("t")}"\n\n[tenants.a]\napi_keys_sha256 = ["{key_hash("ka")}"]\n'
                    f'adapter = ""\n\n[tenants.b]\napi_keys_sha256 = ["{key_hash("kb")}"]\nmodel = "ward@v1"\n'
                    'adapter = "acc@v1"\n')
    reg = TenantRegistry(path)
    assert reg.tenants()["a"].model == "" and reg.tenants()["b"].model == "ward@v1"
    assert reg.models_in_use() == {"", "ward@v1"}
    moved = reg.set_model({"a": ("ward@v2", ""), "b": ("ward@v2", "acc2@v1")})
    assert (moved["a"].model, moved["b"].model, moved["b"].adapter) == ("ward@v2", "ward@v2", "acc2@v1")
    assert TenantRegistry(path).tenants()["b"].adapter == "acc2@v1"
    assert reg.set_pinned(["ward@v2", "ward@v2", "x@y"]) == ("ward@v2", "x@y")
    assert TenantRegistry(path).pinned_models() == ("ward@v2", "x@y")
    assert reg.set_pinned([]) == ()
    text = path.read_text()
    with pytest.raises(ValueError):
        reg.set_model({"a": ("not a ref", "")})
    with pytest.raises(KeyError):
        reg.set_model({"zz": ("ward@v2", "")})
    assert path.read_text() == text
    path.write_text(text.replace('model = "ward@v2"', 'model = "ward"', 1))
    with pytest.raises(ValueError, match="tenant a: invalid model reference"):
        TenantRegistry(path)


def test_a_version_is_loaded_with_the_deployments_config_and_absolute_paths(tmp_path):
    from brogue.server.triton_models import VersionModels, triton_name

    repo = tmp_path / "repo"
    shutil.copytree(DEMO.parent.parent / "asr_streaming", repo / "asr_streaming",
                    ignore=shutil.ignore_patterns("__pycache__"))
    gpu = (repo / "asr_streaming" / "config.pbtxt").read_text().replace('string_value: "cpu"', 'string_value: "torch-cuda"')
    (repo / "asr_streaming" / "configs").mkdir()
    (repo / "asr_streaming" / "configs" / "gpu.pbtxt").write_text(gpu)
    ref = ModelRef("ward", "v2")
    for name, provider in (("", "cpu"), ("gpu", "torch-cuda")):
        v = VersionModels(repo, triton_repository="/models", parameters={"LATENCIES": "72_5"}, config_name=name)
        config = json.loads(v.config_json(ref))
        params = {k: p.get("string_value", "") for k, p in config["parameters"].items()}  # proto3 JSON omits ""
        assert config["name"] == triton_name(ref) == "asr_streaming@ward@v2"
        assert params["MODEL_DIR"] == "/models/models/ward/v2" and params["ADAPTER_STORE"] == "/models/adapters"
        assert params["EXECUTION_PROVIDER"] == provider and params["LATENCIES"] == "72_5"
        assert v.settings()["LATENCIES"] == "72_5"
        assert v.files()["file:1/model.py"] == (repo / "asr_streaming" / "1" / "model.py").read_bytes()
        assert config["sequence_batching"]["control_input"]  # the rest of the config comes along
