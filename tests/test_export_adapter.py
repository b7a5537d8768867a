"""NeMo LinearAdapters -> adapter-store entries (brogue.export.adapter), and the store's refusals.

A tiny cache-aware CTC model (d_model 64, 2 layers) is built from config once per module, with
random (non-identity) adapter weights. The tests show that a ``save_adapters`` file and the live
model convert to the same arrays, equal to NeMo's parameters; that the bank computation on the
exported arrays equals NeMo's own adapter forward; and that every kind of bad input is refused
with the right ``AdapterError.code`` and a message that names the problem.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import save as save_safetensors

from brogue.adapters import (
    MANIFEST_FILE,
    TENSORS_FILE,
    AdapterError,
    BaseSpec,
    content_hash,
    read_adapter,
)
from brogue.export.adapter import (
    adapter_into_model,
    adapters_from_file,
    adapters_from_model,
    export_adapter,
    load_adapter_file,
)
from brogue.export.bank import BankHooks, bank_delta

pytestmark = pytest.mark.nemo

D_MODEL, N_LAYERS, DIM, MAX_DIM = 64, 2, 8, 16
MODEL_KW = dict(d_model=D_MODEL, n_layers=N_LAYERS, n_heads=2, att_context_size=[16, 7])


def build(**kw):
    from brogue.export.configs import build_model

    return build_model("ctc", **{**MODEL_KW, **kw}).eval()


def add_adapter(model, name: str, dim: int, seed: int, **cfg_kw) -> None:
    """Add ``encoder:NAME`` and give it random weights (W_up, zero at init, included)."""
    from nemo.collections.common.parts.adapter_modules import LinearAdapterConfig

    d = int(model.encoder.d_model)
    model.add_adapter(name=f"encoder:{name}", cfg=LinearAdapterConfig(in_features=d, dim=dim, **cfg_kw))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in model.encoder.layers:
            for k, p in layer.adapter_layer[name].named_parameters():
                if k.endswith("bias"):
                    p.copy_(0.2 * torch.randn(p.shape, generator=g))
                elif p.ndim == 1:  # LayerNorm weight
                    p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
                else:
                    p.copy_(0.3 * torch.randn(p.shape, generator=g))
    model.set_enabled_adapters(enabled=False)
    model.eval()


def nemo_params(model, name: str, layer: int) -> dict[str, torch.Tensor]:
    seq = model.encoder.layers[layer].adapter_layer[name].module
    return {"ln_weight": seq[0].weight, "ln_bias": seq[0].bias, "down": seq[1].weight, "up": seq[3].weight}


def as_numpy(params: dict) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy() for k, v in params.items()}


def base_spec(model, max_dim: int = MAX_DIM, **override) -> BaseSpec:
    from brogue.export.nemo_model import fingerprint

    fields = dict(fingerprint=fingerprint(model), n_layers=len(model.encoder.layers),
                  d_model=int(model.encoder.d_model), max_dim=max_dim)
    return BaseSpec(**{**fields, **override})


@contextlib.contextmanager
def refused(code: str, *words: str):
    """Like ``pytest.raises(AdapterError)``, also checking its ``code`` and that the message names each word."""
    with pytest.raises(AdapterError) as info:
        yield info
    err = info.value
    assert err.code == code, f"expected code {code!r}, got {err.code!r}: {err}"
    for w in words:
        assert w in str(err), f"message lacks {w!r}: {err}"


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """Model A with adapters 'acc' (dim 8) and 'alt' (dim 4), and its save_adapters files."""
    d = tmp_path_factory.mktemp("base")
    model = build()
    add_adapter(model, "acc", DIM, seed=1)
    add_adapter(model, "alt", 4, seed=2)
    for layer in model.encoder.layers:  # the randomisation really happened
        assert layer.adapter_layer["acc"].module[3].weight.abs().min() > 0
    model.save_adapters(str(d / "acc.pt"), name="encoder:acc")
    model.save_adapters(str(d / "both.pt"))
    return {"model": model, "dir": d, "acc": d / "acc.pt", "both": d / "both.pt"}


@pytest.fixture(scope="module")
def other(tmp_path_factory):
    """Model B, same config, freshly initialised: another base. Adapters 'big' (dim 32) and 'post'."""
    d = tmp_path_factory.mktemp("other")
    model = build()
    add_adapter(model, "big", 2 * MAX_DIM, seed=3)
    add_adapter(model, "post", DIM, seed=4, norm_position="post")
    model.save_adapters(str(d / "big.pt"), name="encoder:big")
    model.save_adapters(str(d / "post.pt"), name="encoder:post")
    return {"model": model, "dir": d, "big": d / "big.pt", "post": d / "post.pt"}


@pytest.fixture(scope="module")
def acc_entry(base, tmp_path_factory):
    """The 'acc' adapter exported from its save_adapters file into a store."""
    store = tmp_path_factory.mktemp("store")
    manifest = export_adapter(base["acc"], model=base["model"], store=store, version="v1", kind="accent",
                              description="a test accent")
    return store / "acc" / "v1", manifest


def store_entries(store: Path) -> list[Path]:
    return sorted(p for p in store.rglob("*")) if store.exists() else []


# ---------------------------------------------------------------------------------------------
# Conversion


def test_file_and_model_give_identical_arrays_equal_to_nemo(base):
    model = base["model"]
    from_file = adapters_from_file(base["acc"], N_LAYERS, D_MODEL)
    assert set(from_file) == {"acc"}
    from_model = adapters_from_model(model)
    assert set(from_model) == {"acc", "alt"}
    a, b = from_file["acc"], from_model["acc"]
    assert set(a) == set(b) == {"ln_weight", "ln_bias", "down", "up"}
    shapes = {"ln_weight": (N_LAYERS, D_MODEL), "ln_bias": (N_LAYERS, D_MODEL), "down": (N_LAYERS, DIM, D_MODEL),
              "up": (N_LAYERS, D_MODEL, DIM)}
    for k in a:
        assert a[k].dtype == b[k].dtype == np.float32
        assert a[k].shape == b[k].shape == shapes[k], k
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    for layer in range(N_LAYERS):
        for k, v in as_numpy(nemo_params(model, "acc", layer)).items():
            np.testing.assert_array_equal(a[k][layer], v, err_msg=f"layer {layer} {k}")
    assert np.abs(a["up"]).min() > 0  # not NeMo's zero init
    assert adapters_from_file(base["both"], N_LAYERS, D_MODEL)["alt"]["down"].shape == (N_LAYERS, 4, D_MODEL)


def test_a_store_entry_loads_back_into_a_nemo_model_exactly(base, acc_entry):
    """adapter_into_model is the inverse of adapters_from_model: a fresh model given the entry's
    tensors holds NeMo parameters equal to the original adapter's, bit for bit."""
    entry, _ = acc_entry
    fresh = build()
    adapter_into_model(fresh, "acc", read_adapter(entry, None))
    for layer in range(N_LAYERS):
        want = as_numpy(nemo_params(base["model"], "acc", layer))
        got = as_numpy(nemo_params(fresh, "acc", layer))
        assert set(got) == set(want)
        for k in want:
            np.testing.assert_array_equal(got[k], want[k], err_msg=f"layer {layer} {k}")


def test_manifest(base, acc_entry):
    from brogue.export.nemo_model import fingerprint

    entry, manifest = acc_entry
    assert sorted(p.name for p in entry.iterdir()) == sorted([MANIFEST_FILE, TENSORS_FILE])
    on_disk = json.loads((entry / MANIFEST_FILE).read_text())
    assert on_disk["name"] == manifest.name == "acc"
    assert on_disk["version"] == manifest.version == "v1"
    assert on_disk["kind"] == "accent" and on_disk["description"] == "a test accent"
    assert on_disk["dim"] == DIM and on_disk["n_layers"] == N_LAYERS and on_disk["d_model"] == D_MODEL
    assert on_disk["sha256"] == manifest.sha256 == content_hash(entry / TENSORS_FILE)
    assert on_disk["size_bytes"] == (entry / TENSORS_FILE).stat().st_size
    fp = fingerprint(base["model"])
    assert fp.startswith("sha256:") and on_disk["base_fingerprint"] == manifest.base_fingerprint == fp
    assert on_disk["source"]["adapter"] == "acc" and on_disk["source"]["from"] == str(base["acc"])
    w = read_adapter(entry, base_spec(base["model"]))
    assert w.manifest == manifest


def test_store_entries_from_file_and_model_are_byte_identical(base, tmp_path):
    model = base["model"]
    m_file = export_adapter(base["acc"], model=model, store=tmp_path / "a", adapter="acc")
    m_model = export_adapter(None, model=model, store=tmp_path / "b", adapter="acc", name="acc")
    assert m_file.sha256 == m_model.sha256
    assert m_file.version == m_model.version == f"sha-{m_file.sha256[:12]}"
    assert m_model.source["from"] == "model"
    fa = (tmp_path / "a" / "acc" / m_file.version / TENSORS_FILE).read_bytes()
    fb = (tmp_path / "b" / "acc" / m_model.version / TENSORS_FILE).read_bytes()
    assert fa == fb
    # Same weights, same version: publishing again is refused (entries are immutable).
    with pytest.raises(FileExistsError):
        export_adapter(base["acc"], model=model, store=tmp_path / "a")


def test_other_adapter_is_chosen_by_name(base, tmp_path):
    m = export_adapter(base["both"], model=base["model"], store=tmp_path, adapter="alt", name="alt-v")
    w = read_adapter(tmp_path / "alt-v" / m.version, base_spec(base["model"]))
    assert w.manifest.dim == 4
    np.testing.assert_array_equal(w.up[1], base["model"].encoder.layers[1].adapter_layer["alt"].module[3].weight
                                  .detach().numpy())
    with refused("missing", "'nope'", "acc", "alt"):
        export_adapter(base["both"], model=base["model"], store=tmp_path, adapter="nope")


# ---------------------------------------------------------------------------------------------
# Numerics: the bank on the exported arrays equals NeMo's adapter


def padded_bank(weights, max_dim: int = MAX_DIM):
    """A two-slot bank: slot 0 the identity, slot 1 this adapter (zero-padded to max_dim)."""
    lnw, lnb, down, up = (torch.from_numpy(np.array(a)) for a in weights.padded(max_dim))
    assert down.shape == (N_LAYERS, max_dim, D_MODEL) and up.shape == (N_LAYERS, D_MODEL, max_dim)
    return (torch.stack([torch.ones_like(lnw), lnw]), torch.stack([torch.zeros_like(lnb), lnb]),
            torch.stack([torch.zeros_like(down), down]), torch.stack([torch.zeros_like(up), up]))


@torch.no_grad()
def test_bank_delta_equals_nemo_adapter(base, acc_entry):
    model = base["model"]
    weights = read_adapter(acc_entry[0], base_spec(model))
    bank = padded_bank(weights)
    g = torch.Generator().manual_seed(0)
    model.set_enabled_adapters(enabled=False)
    model.set_enabled_adapters(name="encoder:acc", enabled=True)
    try:
        for i, layer in enumerate(model.encoder.layers):
            y = torch.randn(1, 37, D_MODEL, generator=g) * 2.0 + 0.5
            ref = layer.adapter_layer["acc"](y) + y
            via_strategy = layer.forward_enabled_adapters({"x": y, "loc": "post"})["x"]
            torch.testing.assert_close(via_strategy, ref, rtol=0, atol=1e-6)
            got = bank_delta(y, torch.tensor([1]), *bank, layer=i, d_model=D_MODEL) + y
            err = (got - ref).abs().max().item()
            assert err <= 1e-5, f"layer {i}: max |bank - NeMo| = {err:.2e}"
            assert (ref - y).abs().max() > 1e-2  # the adapter does change the output
            # A mixed batch: row 0 on the identity slot is returned unchanged.
            y2 = torch.cat([y, y])
            out = bank_delta(y2, torch.tensor([0, 1]), *bank, layer=i, d_model=D_MODEL) + y2
            assert torch.equal(out[0], y[0])
            assert (out[1] - ref[0]).abs().max().item() <= 1e-5
    finally:
        model.set_enabled_adapters(enabled=False)


@torch.no_grad()
def test_bank_hooks_reproduce_nemo_encoder(base, acc_entry):
    """The whole encoder: NeMo with 'acc' enabled == base encoder + bank hooks on the exported arrays."""
    model = base["model"]
    bank = padded_bank(read_adapter(acc_entry[0], base_spec(model)))
    g = torch.Generator().manual_seed(1)
    feats = torch.randn(2, 80, 120, generator=g)
    lengths = torch.tensor([120, 97])
    model.set_enabled_adapters(enabled=False)
    model.set_enabled_adapters(name="encoder:acc", enabled=True)
    try:
        ref, ref_len = model.encoder(audio_signal=feats, length=lengths)
    finally:
        model.set_enabled_adapters(enabled=False)
    base_out, _ = model.encoder(audio_signal=feats, length=lengths)
    hooks = BankHooks(model.encoder)
    try:
        hooks.bind(torch.tensor([1, 1]), *bank)
        got, got_len = model.encoder(audio_signal=feats, length=lengths)
        hooks.bind(torch.tensor([0, 1]), *bank)
        mixed, _ = model.encoder(audio_signal=feats, length=lengths)
    finally:
        hooks.remove()
    assert torch.equal(got_len, ref_len)
    assert (ref - base_out).abs().max() > 1e-2
    for row in range(2):
        n = int(ref_len[row])
        err = (got[row, :, :n] - ref[row, :, :n]).abs().max().item()
        assert err <= 1e-5, f"row {row}: max |bank - NeMo| = {err:.2e}"
    n0, n1 = int(ref_len[0]), int(ref_len[1])
    torch.testing.assert_close(mixed[0, :, :n0], base_out[0, :, :n0], rtol=0, atol=1e-5)
    torch.testing.assert_close(mixed[1, :, :n1], ref[1, :, :n1], rtol=0, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Refusals


def test_wrong_base(base, other, acc_entry):
    spec_b = base_spec(other["model"])
    assert spec_b.fingerprint != base_spec(base["model"]).fingerprint
    with refused("wrong_base", "acc@v1", spec_b.fingerprint[:16], "trained on base model"):
        read_adapter(acc_entry[0], spec_b)


def test_wrong_width(base, acc_entry, tmp_path):
    narrow = build(d_model=32)
    with refused("shape", str(base["acc"]), "d_model 32", "(64,)"):
        export_adapter(base["acc"], model=narrow, store=tmp_path)
    with refused("shape", "d_model 32"):
        adapters_from_file(base["acc"], N_LAYERS, 32)
    assert store_entries(tmp_path) == []
    with refused("d_model", "d_model 64", "base model has 32"):
        read_adapter(acc_entry[0], base_spec(base["model"], d_model=32))
    with refused("layers", "2 layers", "base model has 3"):
        read_adapter(acc_entry[0], base_spec(base["model"], n_layers=3))
    with refused("layers", "layer 1", "the model has 1"):
        adapters_from_file(base["acc"], 1, D_MODEL)


def test_nan_in_one_layer(base, tmp_path):
    data = load_adapter_file(base["acc"])
    data["encoder:acc"][1]["acc.module.3.weight"][5, 2] = float("nan")
    torch.save(data, tmp_path / "nan.pt")
    store = tmp_path / "store"
    with refused("non_finite", "'up'", "NaN/Inf", "layer(s) [1]"):
        export_adapter(tmp_path / "nan.pt", model=base["model"], store=store)
    assert store_entries(store) == []


def test_nan_in_store_entry(acc_entry, base, tmp_path):
    """A NaN smuggled into an entry whose manifest was rewritten to match is still refused."""
    entry = tmp_path / "entry"
    entry.mkdir()
    w = read_adapter(acc_entry[0], None)
    arrays = {"ln_weight": w.ln_weight.copy(), "ln_bias": w.ln_bias, "down": w.down, "up": w.up}
    arrays["ln_weight"][0, 3] = np.inf
    blob = save_safetensors(arrays)
    (entry / TENSORS_FILE).write_bytes(blob)
    manifest = json.loads((acc_entry[0] / MANIFEST_FILE).read_text())
    manifest.update(sha256=content_hash(entry / TENSORS_FILE), size_bytes=len(blob))
    (entry / MANIFEST_FILE).write_text(json.dumps(manifest))
    with refused("non_finite", "'ln_weight'", "layer(s) [0]", TENSORS_FILE):
        read_adapter(entry, base_spec(base["model"]))


@pytest.mark.parametrize("keep", [0, 10, 0.5, -20])
def test_truncated_pt(base, tmp_path, keep):
    data = base["acc"].read_bytes()
    n = int(len(data) * keep) if isinstance(keep, float) else (keep if keep >= 0 else len(data) + keep)
    (tmp_path / "cut.pt").write_bytes(data[:n])
    with refused("truncated", "cut.pt", "not a loadable NeMo adapter file"):
        load_adapter_file(tmp_path / "cut.pt")
    with refused("truncated", "cut.pt"):
        export_adapter(tmp_path / "cut.pt", model=base["model"], store=tmp_path / "store")
    assert store_entries(tmp_path / "store") == []


def test_missing_pt(base, tmp_path):
    with refused("missing", "nothing.pt"):
        export_adapter(tmp_path / "nothing.pt", model=base["model"], store=tmp_path / "store")


# An object whose unpickling would run code: it writes a marker file.
def _plant_marker(path: str) -> str:
    Path(path).write_text("unpickled: code ran")
    return path


class Payload:
    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (_plant_marker, (self.marker,))


class Innocent:
    """A plain object of a class that is not on the allowlist."""

    def __init__(self):
        self.x = 1


@pytest.mark.parametrize("zipfile_format", [True, False], ids=["zip", "legacy_pickle"])
def test_unsafe_pt_is_refused_and_never_executed(base, tmp_path, zipfile_format):
    layers = load_adapter_file(base["acc"])["encoder:acc"]
    marker = tmp_path / "marker"
    torch.save({"encoder:acc": layers, "evil": Payload(marker)}, tmp_path / "evil.pt",
               _use_new_zipfile_serialization=zipfile_format)
    store = tmp_path / "store"
    with refused("unsafe", "evil.pt", "_plant_marker", "not an allowed"):
        load_adapter_file(tmp_path / "evil.pt")
    with refused("unsafe", "evil.pt"):
        adapters_from_file(tmp_path / "evil.pt", N_LAYERS, D_MODEL)
    with refused("unsafe", "evil.pt"):
        export_adapter(tmp_path / "evil.pt", model=base["model"], store=store)
    assert not marker.exists(), "the pickled payload was executed"
    assert store_entries(store) == []
    # Control: the payload is live. An unrestricted load does run it.
    control = tmp_path / "control_marker"
    torch.save({"evil": Payload(control)}, tmp_path / "control.pt", _use_new_zipfile_serialization=zipfile_format)
    torch.load(tmp_path / "control.pt", weights_only=False)
    assert control.exists()

    torch.save({"encoder:acc": layers, "obj": Innocent()}, tmp_path / "obj.pt",
               _use_new_zipfile_serialization=zipfile_format)
    with refused("unsafe", "obj.pt", "Innocent"):
        load_adapter_file(tmp_path / "obj.pt")


def test_pt_in_the_store_is_refused_unopened(acc_entry, base, tmp_path):
    """A torch.save file put where adapter.safetensors belongs is recognised, never unpickled."""
    entry = tmp_path / "entry"
    entry.mkdir()
    marker = tmp_path / "marker"
    torch.save({"evil": Payload(marker)}, entry / TENSORS_FILE)
    (entry / MANIFEST_FILE).write_text((acc_entry[0] / MANIFEST_FILE).read_text())
    with refused("unsafe", TENSORS_FILE, "ZIP archive"):
        read_adapter(entry, base_spec(base["model"]))
    assert not marker.exists()


def copy_entry(src: Path, dest: Path) -> Path:
    dest.mkdir()
    for name in (MANIFEST_FILE, TENSORS_FILE):
        (dest / name).write_bytes((src / name).read_bytes())
    return dest


@pytest.mark.parametrize("cut", [4, 9, 100, -1, -100])
def test_truncated_safetensors(acc_entry, base, tmp_path, cut):
    entry = copy_entry(acc_entry[0], tmp_path / "entry")
    data = (entry / TENSORS_FILE).read_bytes()
    (entry / TENSORS_FILE).write_bytes(data[:cut])
    with refused("truncated", TENSORS_FILE, "manifest says"):
        read_adapter(entry, base_spec(base["model"]))


@pytest.mark.parametrize("where", ["header", "data"])
def test_corrupted_safetensors(acc_entry, base, tmp_path, where):
    entry = copy_entry(acc_entry[0], tmp_path / "entry")
    data = bytearray((entry / TENSORS_FILE).read_bytes())
    pos = 20 if where == "header" else len(data) - 7
    data[pos] ^= 0x01
    (entry / TENSORS_FILE).write_bytes(bytes(data))
    with refused("hash_mismatch", TENSORS_FILE, "SHA-256", "modified or corrupted"):
        read_adapter(entry, base_spec(base["model"]))


def test_post_norm_adapter_is_refused(other, tmp_path):
    with refused("kind", "'post'", "norm_position='post'", "only 'pre'"):
        adapters_from_file(other["post"], N_LAYERS, D_MODEL)
    with refused("kind", "norm_position='post'"):
        export_adapter(other["post"], model=other["model"], store=tmp_path)
    with refused("kind", "'post'", "norm_position='post'"):  # the live model carries 'big' and 'post'
        adapters_from_model(other["model"])
    assert store_entries(tmp_path) == []


def test_adapter_too_large_for_bank(other, tmp_path):
    m = export_adapter(other["big"], model=other["model"], store=tmp_path)  # the exporter takes any dim
    assert m.dim == 2 * MAX_DIM
    entry = tmp_path / "big" / m.version
    with refused("too_large", "dim 32", "max_dim 16"):
        read_adapter(entry, base_spec(other["model"], max_dim=MAX_DIM))
    w = read_adapter(entry, base_spec(other["model"], max_dim=2 * MAX_DIM))
    with refused("too_large", "dim 32", "max_dim 16"):
        w.padded(MAX_DIM)


def test_two_adapters_without_a_choice_are_ambiguous(base, tmp_path):
    with refused("ambiguous", "both.pt", "['acc', 'alt']", "pick one"):
        export_adapter(base["both"], model=base["model"], store=tmp_path)
    with refused("ambiguous", "model", "['acc', 'alt']"):
        export_adapter(None, model=base["model"], store=tmp_path)
    assert store_entries(tmp_path) == []
