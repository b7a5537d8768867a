"""Tests of the adapter-store entry format (brogue.adapters): numpy only, no torch."""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import shutil
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.numpy import save

from brogue.adapters import (
    MANIFEST_FILE,
    TENSOR_NAMES,
    TENSORS_FILE,
    AdapterError,
    AdapterRef,
    BaseSpec,
    content_hash,
    read_adapter,
    validate_arrays,
    write_adapter,
)

L, D, R = 2, 8, 4
FINGERPRINT = "sha256:" + "ab" * 32
BASE = BaseSpec(fingerprint=FINGERPRINT, n_layers=L, d_model=D, max_dim=8)


def make_arrays(seed: int = 0, n_layers: int = L, d_model: int = D, dim: int = R) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays = {
        "ln_weight": 1 + 0.1 * rng.standard_normal((n_layers, d_model)),
        "ln_bias": 0.1 * rng.standard_normal((n_layers, d_model)),
        "down": rng.standard_normal((n_layers, dim, d_model)),
        "up": rng.standard_normal((n_layers, d_model, dim)),
    }
    return {name: a.astype(np.float32) for name, a in arrays.items()}


def write_entry(path: Path, arrays: dict[str, np.ndarray] | None = None) -> Path:
    write_adapter(
        path,
        make_arrays() if arrays is None else arrays,
        name="acme",
        version="v1",
        base_fingerprint=FINGERPRINT,
    )
    return path


@pytest.fixture
def entry(tmp_path: Path) -> Path:
    return write_entry(tmp_path / "acme" / "v1")


def edit_manifest(entry: Path, **changes) -> None:
    path = entry / MANIFEST_FILE
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def replace_tensors(entry: Path, blob: bytes) -> None:
    """Replace the tensor file and update the manifest's hash and size to match it, so that the
    checks after the hash (the tensors themselves) are what decides."""
    (entry / TENSORS_FILE).write_bytes(blob)
    edit_manifest(entry, sha256=hashlib.sha256(blob).hexdigest(), size_bytes=len(blob))


def edit_header(blob: bytes, edit) -> bytes:
    """Rewrite the JSON header of a safetensors blob with ``edit(header_dict)``."""
    n = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8 : 8 + n])
    edit(header)
    text = json.dumps(header).encode()
    return len(text).to_bytes(8, "little") + text + blob[8 + n :]


def read_error(entry: Path, base: BaseSpec | None = BASE) -> AdapterError:
    with pytest.raises(AdapterError) as info:
        read_adapter(entry, base)
    return info.value


def adapter_forward(y, ln_weight, ln_bias, down, up):
    """One LinearAdapter: y + up @ silu(down @ layer_norm(y))."""
    z = (y - y.mean(-1, keepdims=True)) / np.sqrt(y.var(-1, keepdims=True) + 1e-5) * ln_weight + ln_bias
    h = z @ down.T
    return y + (h / (1 + np.exp(-h))) @ up.T


# --- round trip -------------------------------------------------------------------------------------


def test_roundtrip_and_padding(tmp_path: Path) -> None:
    arrays = make_arrays()
    manifest = write_adapter(
        tmp_path / "e",
        arrays,
        name="acme",
        kind="accent",
        description="Scots English",
        base_fingerprint=FINGERPRINT,
        source={"run": 7},
    )
    tensors = tmp_path / "e" / TENSORS_FILE
    assert manifest.sha256 == content_hash(tensors)
    assert manifest.size_bytes == tensors.stat().st_size
    assert manifest.version == "sha-" + manifest.sha256[:12]
    assert (manifest.n_layers, manifest.d_model, manifest.dim) == (L, D, R)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e"]  # no temporary directory left

    weights = read_adapter(tmp_path / "e", BASE)
    assert weights.manifest == manifest
    for name in TENSOR_NAMES:
        np.testing.assert_array_equal(getattr(weights, name), arrays[name])

    ln_weight, ln_bias, down, up = weights.padded(8)
    assert down.shape == (L, 8, D) and up.shape == (L, D, 8)
    assert down.dtype == up.dtype == np.float32
    np.testing.assert_array_equal(down[:, :R], arrays["down"])
    np.testing.assert_array_equal(up[:, :, :R], arrays["up"])
    assert not down[:, R:].any() and not up[:, :, R:].any()
    y = np.random.default_rng(1).standard_normal((5, D)).astype(np.float32)
    for layer in range(L):
        np.testing.assert_allclose(
            adapter_forward(y, ln_weight[layer], ln_bias[layer], down[layer], up[layer]),
            adapter_forward(y, *(arrays[name][layer] for name in TENSOR_NAMES)),
            rtol=1e-6,
            atol=1e-6,
        )


def test_manifest_json_has_exactly_the_documented_fields(entry: Path) -> None:
    assert list(json.loads((entry / MANIFEST_FILE).read_text())) == [
        "format",
        "name",
        "version",
        "kind",
        "description",
        "dim",
        "n_layers",
        "d_model",
        "dtype",
        "base_fingerprint",
        "sha256",
        "size_bytes",
        "created_at",
        "source",
        "lm",
    ]


def test_a_manifest_without_the_optional_lm_field_still_reads(entry: Path) -> None:
    """Entries written before domain LMs existed have no ``lm`` field; they stay valid."""
    data = json.loads((entry / MANIFEST_FILE).read_text())
    del data["lm"]
    (entry / MANIFEST_FILE).write_text(json.dumps(data))
    w = read_adapter(entry, BASE)
    assert w.manifest.lm == {} and w.lm_path is None


def test_domain_lm_is_written_hashed_and_verified(tmp_path: Path) -> None:
    from brogue.adapters import LM_FILE
    from brogue.engine.lm import read_text

    m = write_adapter(tmp_path / "e", make_arrays(), name="med", version="v1", base_fingerprint=FINGERPRINT,
                      lm_sentences=["Give 5 mg  Warfarin", "", "start metformin"], lm_order=5, lm_weight=0.4)
    assert m.lm["sentences"] == 2 and m.lm["order"] == 5 and m.lm["weight"] == 0.4
    w = read_adapter(tmp_path / "e", BASE)
    assert w.lm_path == tmp_path / "e" / LM_FILE
    assert read_text(w.lm_path) == ["give 5 mg warfarin", "start metformin"]
    path = tmp_path / "e" / LM_FILE
    blob = path.read_bytes()
    path.write_bytes(blob[:-1] + bytes([blob[-1] ^ 1]))
    with pytest.raises(AdapterError, match="SHA-256") as e:
        read_adapter(tmp_path / "e", BASE)
    assert e.value.code == "hash_mismatch"
    path.write_bytes(blob[:10])
    with pytest.raises(AdapterError) as e:
        read_adapter(tmp_path / "e", BASE)
    assert e.value.code == "truncated"
    path.unlink()
    with pytest.raises(AdapterError, match="domain LM") as e:
        read_adapter(tmp_path / "e", BASE)
    assert e.value.code == "missing"


@pytest.mark.parametrize("change", [{"weight": 1.0}, {"order": 0}, {"file": "../lm.txt.gz"}, {"sha256": "x"},
                                    {"extra": 1}, {"weight": "0.5"}])
def test_bad_lm_fields_are_refused(tmp_path: Path, change: dict) -> None:
    write_adapter(tmp_path / "e", make_arrays(), name="med", version="v1", base_fingerprint=FINGERPRINT,
                  lm_sentences=["start metformin"])
    data = json.loads((tmp_path / "e" / MANIFEST_FILE).read_text())
    data["lm"].update(change)
    (tmp_path / "e" / MANIFEST_FILE).write_text(json.dumps(data))
    with pytest.raises(AdapterError, match="lm") as e:
        read_adapter(tmp_path / "e", BASE)
    assert e.value.code == "manifest"


def test_write_casts_to_float32_and_keeps_an_explicit_version(tmp_path: Path) -> None:
    arrays = {name: a.astype(np.float64) for name, a in make_arrays().items()}
    manifest = write_adapter(tmp_path / "e", arrays, name="acme", version="2024-06.1", base_fingerprint="fp")
    assert str(manifest.ref) == "acme@2024-06.1"
    weights = read_adapter(tmp_path / "e", None)
    np.testing.assert_array_equal(weights.down, arrays["down"].astype(np.float32))


def test_equal_weights_get_equal_default_versions(tmp_path: Path) -> None:
    first = write_adapter(tmp_path / "a", make_arrays(), name="acme", base_fingerprint="fp")
    second = write_adapter(tmp_path / "b", make_arrays(), name="acme", base_fingerprint="fp")
    other = write_adapter(tmp_path / "c", make_arrays(seed=1), name="acme", base_fingerprint="fp")
    assert first.version == second.version != other.version


def test_padding_narrower_than_the_adapter_is_refused(entry: Path) -> None:
    with pytest.raises(AdapterError) as info:
        read_adapter(entry, BASE).padded(R - 1)
    assert info.value.code == "too_large"


# --- read: each defect has its code and a message naming the file and the problem -------------------


class _Trap:
    """Unpickling this creates the file at ``path``: proof that a pickle was (never) loaded."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return open, (self.path, "w")


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_pickle_renamed_to_safetensors_is_refused_unread(entry: Path, tmp_path: Path, protocol: int) -> None:
    sentinel = tmp_path / "unpickled"
    (entry / TENSORS_FILE).write_bytes(pickle.dumps({"down": _Trap(str(sentinel))}, protocol=protocol))
    error = read_error(entry)
    assert error.code == "unsafe"
    assert "pickle" in str(error) and TENSORS_FILE in str(error)
    assert not sentinel.exists()


def test_torch_zip_checkpoint_is_refused(entry: Path) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps({"down": [1.0]}))
    (entry / TENSORS_FILE).write_bytes(buffer.getvalue())
    error = read_error(entry)
    assert error.code == "unsafe" and "ZIP" in str(error)


def _truncate(entry: Path) -> None:
    path = entry / TENSORS_FILE
    path.write_bytes(path.read_bytes()[:-3])


def _append(entry: Path) -> None:
    with open(entry / TENSORS_FILE, "ab") as f:
        f.write(b"\0")


def _flip_byte(entry: Path) -> None:
    path = entry / TENSORS_FILE
    blob = bytearray(path.read_bytes())
    blob[-5] ^= 0x01
    path.write_bytes(bytes(blob))


def _with_tensors(**overrides):
    """Replace the tensor file by one holding these tensors (``None`` drops one), hash updated."""

    def mutate(entry: Path) -> None:
        arrays = {**make_arrays(), **overrides}
        replace_tensors(entry, save({name: a for name, a in arrays.items() if a is not None}))

    return mutate


def _float_shape(entry: Path) -> None:
    """Write the shape of 'up' as floats ([2.0, 8.0, 4.0]): Python's == accepts it, safetensors does not."""

    def edit(header: dict) -> None:
        header["up"]["shape"] = [float(n) for n in header["up"]["shape"]]

    replace_tensors(entry, edit_header((entry / TENSORS_FILE).read_bytes(), edit))


def _nan_in_down_layer_1(entry: Path) -> None:
    down = make_arrays()["down"]
    down[1, 2, 3] = np.nan
    _with_tensors(down=down)(entry)


def _inf_in_ln_bias_layer_0(entry: Path) -> None:
    ln_bias = make_arrays()["ln_bias"]
    ln_bias[0, 0] = -np.inf
    _with_tensors(ln_bias=ln_bias)(entry)


def _cut_short_with_matching_hash(entry: Path) -> None:
    replace_tensors(entry, (entry / TENSORS_FILE).read_bytes()[:-8])


def _bf16_down(entry: Path) -> None:
    """A well-formed file whose 'down' is BF16 (numpy has no bfloat16)."""
    arrays = {**make_arrays(), "down": make_arrays()["down"].astype(np.float16)}
    replace_tensors(entry, edit_header(save(arrays), lambda h: h["down"].update(dtype="BF16")))


def _write(name: str, content: str):
    def mutate(entry: Path) -> None:
        (entry / name).write_text(content)

    return mutate


def _delete(name: str):
    def mutate(entry: Path) -> None:
        (entry / name).unlink()

    return mutate


def _drop_manifest_field(field: str):
    def mutate(entry: Path) -> None:
        path = entry / MANIFEST_FILE
        data = json.loads(path.read_text())
        del data[field]
        path.write_text(json.dumps(data))

    return mutate


def _manifest(**changes):
    return lambda entry: edit_manifest(entry, **changes)


_SMALL = make_arrays(dim=R - 1)
_FP16_DOWN = make_arrays()["down"].astype(np.float16)
READ_DEFECTS = [
    # (id, mutation, code, fragments the message must contain)
    ("no-manifest", _delete(MANIFEST_FILE), "missing", [MANIFEST_FILE, "not found"]),
    ("no-tensors", _delete(TENSORS_FILE), "missing", [TENSORS_FILE, "not found"]),
    ("garbage-manifest", _write(MANIFEST_FILE, "{not json"), "manifest", [MANIFEST_FILE, "not valid JSON"]),
    ("manifest-list", _write(MANIFEST_FILE, "[1]"), "manifest", ["expected a JSON object"]),
    ("deep-manifest", _write(MANIFEST_FILE, "[" * 100_000), "manifest", ["not valid JSON"]),
    ("format-2", _manifest(format="brogue-adapter/2"), "manifest", ["unsupported format", "/2"]),
    ("no-sha256", _drop_manifest_field("sha256"), "manifest", ["missing fields ['sha256']"]),
    ("extra-field", _manifest(extra=1), "manifest", ["unexpected fields ['extra']"]),
    ("dim-str", _manifest(dim="4"), "manifest", ["'dim' must be int, got str"]),
    ("dim-bool", _manifest(dim=True), "manifest", ["'dim' must be int, got bool"]),
    ("dim-0", _manifest(dim=0), "manifest", ["dim must be >= 1"]),
    ("bad-name", _manifest(name="Acme!"), "manifest", ["invalid adapter name 'Acme!'"]),
    ("bad-sha", _manifest(sha256="xyz"), "manifest", ["sha256 must be 64 lowercase hex"]),
    ("bad-time", _manifest(created_at="yesterday"), "manifest", ["created_at 'yesterday'"]),
    ("manifest-fp16", _manifest(dtype="float16"), "dtype", ["'float16'"]),
    ("truncated", _truncate, "truncated", [TENSORS_FILE, "cut short"]),
    ("appended", _append, "truncated", [TENSORS_FILE, "bytes"]),
    ("cut-consistently", _cut_short_with_matching_hash, "truncated", [TENSORS_FILE, "cut short"]),
    ("flipped-byte", _flip_byte, "hash_mismatch", [TENSORS_FILE, "SHA-256"]),
    ("garbage", lambda e: replace_tensors(e, b"hello, world" * 10), "not_safetensors", ["byte 8"]),
    ("float-shape", _float_shape, "not_safetensors", [TENSORS_FILE, "not a valid safetensors file"]),
    ("extra-tensor", _with_tensors(extra=_SMALL["up"]), "tensors", ["unexpected tensors ['extra']"]),
    ("missing-tensor", _with_tensors(up=None), "tensors", [TENSORS_FILE, "missing tensors ['up']"]),
    ("fp16-tensor", _with_tensors(down=_FP16_DOWN), "dtype", ["'down'", "F16"]),
    ("bf16-tensor", _bf16_down, "dtype", ["'down'", "BF16"]),
    ("inconsistent", _with_tensors(up=make_arrays(dim=R + 1)["up"]), "shape", ["'up'", "[L, d, r]"]),
    ("dim-differs-from-manifest", _with_tensors(**_SMALL), "shape", [MANIFEST_FILE, str((L, D, R - 1))]),
    ("nan", _nan_in_down_layer_1, "non_finite", ["'down'", "NaN", "layer(s) [1]"]),
    ("inf", _inf_in_ln_bias_layer_0, "non_finite", ["'ln_bias'", "layer(s) [0]"]),
]


@pytest.mark.parametrize(
    ("mutate", "code", "fragments"), [pytest.param(*c[1:], id=c[0]) for c in READ_DEFECTS]
)
def test_read_refuses_defect(entry: Path, mutate, code: str, fragments: list[str]) -> None:
    mutate(entry)
    error = read_error(entry)
    assert error.code == code, str(error)
    for fragment in fragments:
        assert fragment in str(error)


BASE_MISMATCHES = [
    # (id, base, code, fragments the message must contain)
    ("fingerprint", BaseSpec("sha256:" + "cd" * 32, L, D, 8), "wrong_base", ["sha256:ababa", "sha256:cdcdc"]),
    ("layers", BaseSpec(FINGERPRINT, L + 1, D, 8), "layers", [f"has {L} layers", f"has {L + 1}"]),
    ("d-model", BaseSpec(FINGERPRINT, L, D * 2, 8), "d_model", [f"d_model {D}", f"has {D * 2}"]),
    ("too-large", BaseSpec(FINGERPRINT, L, D, R - 1), "too_large", [f"dim {R}", f"max_dim {R - 1}"]),
]


@pytest.mark.parametrize(
    ("base", "code", "fragments"), [pytest.param(*c[1:], id=c[0]) for c in BASE_MISMATCHES]
)
def test_read_refuses_an_adapter_for_another_base(entry: Path, base: BaseSpec, code: str, fragments) -> None:
    error = read_error(entry, base)
    assert error.code == code, str(error)
    assert MANIFEST_FILE in str(error)
    for fragment in fragments:
        assert fragment in str(error)


def test_error_survives_pickling() -> None:
    error = pickle.loads(pickle.dumps(AdapterError("shape", "up: bad")))
    assert (error.code, str(error)) == ("shape", "up: bad")


def test_missing_entry(tmp_path: Path) -> None:
    error = read_error(tmp_path / "nope")
    assert error.code == "missing" and "nope" in str(error)


def test_base_is_checked_before_the_tensor_file_is_read(entry: Path) -> None:
    _flip_byte(entry)
    assert read_error(entry, BaseSpec("other", L, D, 8)).code == "wrong_base"


def test_without_base_only_the_entry_itself_is_checked(entry: Path) -> None:
    assert read_adapter(entry, None).manifest.base_fingerprint == FINGERPRINT


# --- write: validation, atomicity -------------------------------------------------------------------


def _with_nan() -> dict[str, np.ndarray]:
    arrays = make_arrays()
    arrays["up"][0, 1, 2] = np.nan
    return arrays


WRITE_DEFECTS = [
    ("nan", _with_nan(), {}, "non_finite"),
    ("overflow", {**make_arrays(), "up": np.full((L, D, R), 1e300)}, {}, "non_finite"),
    ("inconsistent", {**make_arrays(), "up": make_arrays(dim=R + 1)["up"]}, {}, "shape"),
    ("rank", {**make_arrays(), "down": make_arrays()["down"][0]}, {}, "shape"),
    ("empty", make_arrays(dim=0), {}, "shape"),
    ("extra", {**make_arrays(), "extra": np.zeros(1)}, {}, "tensors"),
    ("missing", {k: v for k, v in make_arrays().items() if k != "ln_bias"}, {}, "tensors"),
    ("complex", {**make_arrays(), "up": make_arrays()["up"] * 1j}, {}, "dtype"),
    ("bad-name", make_arrays(), {"name": "Acme"}, "manifest"),
    ("bad-version", make_arrays(), {"version": "../v1"}, "manifest"),
    ("no-fingerprint", make_arrays(), {"base_fingerprint": ""}, "manifest"),
]


@pytest.mark.parametrize(
    ("arrays", "options", "code"), [pytest.param(*c[1:], id=c[0]) for c in WRITE_DEFECTS]
)
def test_write_refuses_defect_and_creates_nothing(tmp_path: Path, arrays, options, code: str) -> None:
    with pytest.raises(AdapterError) as info:
        write_adapter(
            tmp_path / "store" / "e", arrays, **{"name": "acme", "base_fingerprint": "fp", **options}
        )
    assert info.value.code == code, str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_validate_arrays_against_a_base() -> None:
    arrays = make_arrays()
    assert validate_arrays(arrays, BASE) == (L, D, R)
    assert validate_arrays(arrays) == (L, D, R)
    for base, code in [
        (BaseSpec(FINGERPRINT, L + 1, D, 8), "layers"),
        (BaseSpec(FINGERPRINT, L, D + 1, 8), "d_model"),
        (BaseSpec(FINGERPRINT, L, D, R - 1), "too_large"),
    ]:
        with pytest.raises(AdapterError) as info:
            validate_arrays(arrays, base)
        assert info.value.code == code


def test_failed_write_leaves_no_partial_entry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def disk_full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("os.fsync", disk_full)
    with pytest.raises(OSError, match="No space"):
        write_entry(tmp_path / "e")
    assert list(tmp_path.iterdir()) == []


def test_existing_entry_is_never_overwritten(entry: Path) -> None:
    before = (entry / TENSORS_FILE).read_bytes()
    with pytest.raises(FileExistsError):
        write_entry(entry, make_arrays(seed=5))
    assert (entry / TENSORS_FILE).read_bytes() == before


# --- references ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text", ["acme@v1", "a.b-c_d@V-1.2_x", "0@0", "a" * 64 + "@" + "B" * 64, "acme@sha-0123456789ab"]
)
def test_ref_parse_good(text: str) -> None:
    ref = AdapterRef.parse(text)
    assert str(ref) == text and ref == AdapterRef(*text.split("@"))


@pytest.mark.parametrize(
    "text",
    [
        "acme",
        "@v1",
        "acme@",
        "Acme@v1",
        "acme@v1@x",
        "-acme@v1",
        "acme@.v1",
        "ac me@v1",
        "acme@v1\n",
        "a" * 65 + "@v1",
        "acme@" + "v" * 65,
        "../x@v1",
        "",
    ],
)
def test_ref_parse_bad(text: str) -> None:
    with pytest.raises(ValueError, match="invalid adapter reference") as info:
        AdapterRef.parse(text)
    assert repr(text) in str(info.value)


# --- fuzzing: random corruption of the tensor file ------------------------------------------------


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_entry(tmp_path_factory.mktemp("pristine") / "acme")


def corruptions(blob: bytes) -> st.SearchStrategy[bytes]:
    """Byte strings that differ from ``blob``: bytes flipped (often in the header), end cut off,
    bytes appended or inserted."""
    header_end = 8 + int.from_bytes(blob[:8], "little")

    def flip(changes: dict[int, int]) -> bytes:
        out = bytearray(blob)
        for index, mask in changes.items():
            out[index] ^= mask
        return bytes(out)

    positions = st.one_of(st.integers(0, header_end - 1), st.integers(0, len(blob) - 1))
    return st.one_of(
        st.dictionaries(positions, st.integers(1, 255), min_size=1, max_size=8).map(flip),
        st.integers(0, len(blob) - 1).map(lambda k: blob[:k]),
        st.binary(min_size=1, max_size=16).map(lambda extra: blob + extra),
        st.tuples(st.integers(0, len(blob)), st.binary(min_size=1, max_size=16)).map(
            lambda t: blob[: t[0]] + t[1] + blob[t[0] :]
        ),
    )


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_random_corruption_is_always_refused(pristine: Path, data: st.DataObject) -> None:
    corrupted = data.draw(corruptions((pristine / TENSORS_FILE).read_bytes()))
    with tempfile.TemporaryDirectory() as tmp:
        entry = Path(shutil.copytree(pristine, Path(tmp) / "acme"))
        (entry / TENSORS_FILE).write_bytes(corrupted)
        with pytest.raises(AdapterError):
            read_adapter(entry, BASE)


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_random_corruption_with_a_matching_manifest_never_escapes(
    pristine: Path, data: st.DataObject
) -> None:
    """The manifest is rewritten to match the corrupted file (an exporter that hashed a broken file):
    the tensor checks decide alone. Either AdapterError, or a sound adapter of the declared shape."""
    corrupted = data.draw(corruptions((pristine / TENSORS_FILE).read_bytes()))
    with tempfile.TemporaryDirectory() as tmp:
        entry = Path(shutil.copytree(pristine, Path(tmp) / "acme"))
        replace_tensors(entry, corrupted)
        try:
            weights = read_adapter(entry, BASE)
        except AdapterError:
            return
    assert weights.down.shape == (L, R, D) and weights.up.shape == (L, D, R)
    assert all(np.isfinite(getattr(weights, name)).all() for name in TENSOR_NAMES)
