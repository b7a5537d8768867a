"""Full fine-tunes served beside adapters: versions of the model store in a real tritonserver, behind a
real gateway (`brogue serve --triton-url`), driven through the admin API and the WebSocket API.

The "fine-tunes" are the demo model with every weight moved by seeded noise, saved as a .nemo and
exported with `brogue export` (each seed a different model, as two fine-tunes are); `brogue
finetune` itself is tested in test_finetune.py. Every transcript is compared, token for token, with
the in-process runner on the same export.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from websockets.asyncio.client import connect

from safetensors.numpy import save

from brogue.adapters import read_adapter
from brogue.clients.admin import AdminClient, AdminClientError, PushRequest, model_chunks
from brogue.engine.metadata import ModelMeta
from brogue.models.store import export_files
from brogue.server.protos import brogue_admin_pb2 as pb
from brogue.server.protos import brogue_admin_pb2_grpc as pb_grpc
from brogue.server.tenants import key_hash
from conftest import (ADMIN_TOKEN, DEMO_REPO, TEST_EXIT_TIMEOUT, ServingRepo, _reference_runner, demo_speech,
                      model_config, random_adapter_arrays, start_gateway, stop_gateway)
from gateway_clients import bearer, pcm16, ws_stream

pytestmark = pytest.mark.nemo

MiB = 1 << 20
KEYS = {"base": "key-base-m000", "scot": "key-scot-m111", "ward": "key-ward-m222", "clinic": "key-clinic-m333",
        "lab": "key-lab-m444"}


# -- the models, the stack ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> Path:
    """``ward-v1`` and ``ward-v2``: two different "fine-tunes" of the demo model; ``bpe``: a small
    model with a SentencePiece vocabulary that has no 'z'."""
    import sentencepiece as spm
    import torch

    from brogue.export.configs import build_model
    from brogue.export.nemo_export import export_model
    from brogue.export.nemo_model import load_nemo

    out = tmp_path_factory.mktemp("exports")
    for version, seed in (("v1", 1), ("v2", 2)):
        model = load_nemo(DEMO_REPO / "demo.nemo")
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1 + 0.05 * torch.randn(p.shape, generator=g))
        export_model(model, out / f"ward-{version}", name="ward")
    tok = out / "tok"
    tok.mkdir()
    (tok / "text.txt").write_text("\n".join(["patients received furosemide and metformin", "the quick brown fox"] * 30))
    spm.SentencePieceTrainer.train(input=str(tok / "text.txt"), model_prefix=str(tok / "tokenizer"), vocab_size=40,
                                   model_type="bpe", character_coverage=1.0, bos_id=-1, eos_id=-1)
    sp = spm.SentencePieceProcessor(model_file=str(tok / "tokenizer.model"))
    (tok / "vocab.txt").write_text("".join(sp.id_to_piece(i) + "\n" for i in range(sp.get_piece_size())))
    torch.manual_seed(0)
    export_model(build_model("ctc", tokenizer_dir=tok, d_model=64, n_layers=2, n_heads=2, att_context_size=[8, 1]),
                 out / "bpe", name="bpe")
    return out


def _tenants(path: Path, spec: dict) -> None:
    """``spec``: {tenant: {model, adapter, boost, max_streams}}."""
    lines = [f'admin_token_sha256 = "{key_hash(ADMIN_TOKEN)}"', ""]
    for name, t in spec.items():
        lines += [f"[tenants.{name}]", f'api_keys_sha256 = ["{key_hash(KEYS[name])}"]',
                  f'model = "{t.get("model", "")}"', f'adapter = "{t.get("adapter", "")}"',
                  f"max_streams = {t.get('max_streams', 4)}", "max_stream_seconds = 600"]
        if t.get("boost"):
            lines.append("boost = " + json.dumps(t["boost"]))
        lines.append("")
    path.write_text("\n".join(lines))


class Stack:
    def __init__(self, root: Path, triton, gateway):
        self.root, self.triton, self.gw = root, triton, gateway

    def admin(self) -> AdminClient:
        return AdminClient(self.gw.admin_url, ADMIN_TOKEN)

    def models(self) -> dict:
        with self.admin() as c:
            return {m.ref: m for m in c.models().models}

    def tenants_text(self) -> str:
        return self.gw.tenants_file.read_text()


def _start(tmp: Path, tenants: dict, extra=()) -> Stack:
    from brogue.server.tritonserver import TritonProcess

    root = tmp / "repo"
    shutil.copytree(DEMO_REPO / "exported" / "demo", root / "exported" / "demo")
    shutil.copytree(DEMO_REPO / "adapters" / "scottish", root / "adapters" / "scottish")
    model_config(root, "asr_streaming")  # greedy, as the in-process references
    _tenants(tmp / "tenants.toml", tenants)
    triton = TritonProcess(root, models=("asr_streaming",), exit_timeout=TEST_EXIT_TIMEOUT).start(timeout=240)
    repo = ServingRepo(root, root / "exported" / "demo", root / "adapters", {}, {}, "")
    try:
        gw = start_gateway(repo, triton.grpc_url, tmp, extra)
    except BaseException:
        triton.stop()
        raise
    return Stack(root, triton, gw)


def _stop(s: Stack) -> None:
    stop_gateway(s.gw)
    s.triton.stop()


@pytest.fixture(scope="module")
def stack(tmp_path_factory, exports):
    s = _start(tmp_path_factory.mktemp("models"), {
        "base": {}, "scot": {"adapter": "scottish@v1"}, "ward": {"max_streams": 12},
        "clinic": {"boost": ["zyrtec"]}, "lab": {}})
    with s.admin() as c:
        r = c.publish_model(exports / "ward-v1", "ward", "v1", rollout=False, description="seed 1")
        assert (r.model.ref, list(r.moved_tenants)) == ("ward@v1", [])
        c.assign_model("ward", "ward@v1")
        c.assign_model("clinic", "ward@v1")
    yield s
    _stop(s)


# -- helpers ---------------------------------------------------------------------------------------

def reference(model_dir: Path, pcm: np.ndarray, arrays: dict | None = None) -> str:
    """The in-process runner's transcript of ``pcm`` (int16) on the export at ``model_dir``."""
    runner = _reference_runner(str(model_dir))
    if arrays is not None:
        runner.bank.write(1, arrays["ln_weight"], arrays["ln_bias"], arrays["down"], arrays["up"])
    (st,) = runner.transcribe([pcm.astype(np.float32) / 32768.0], [0 if arrays is None else 1])
    return runner.detok.decode(st.tokens)


async def refused_stream(url: str, key: str) -> dict:
    """Open a stream that the gateway refuses before ``ready``: its error message and close code."""
    async with connect(url, additional_headers=bearer(key), open_timeout=15) as ws:
        await ws.send(json.dumps({"type": "config", "sample_rate": 16000, "encoding": "pcm16"}))
        msg = json.loads(await asyncio.wait_for(ws.recv(), 60))
        await ws.wait_closed()
        return {**msg, "close_code": ws.close_code}


def snapshot(folder: Path) -> list:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# -- serving -----------------------------------------------------------------------------------------

def test_a_tenant_on_a_full_model_gets_its_transcript_beside_adapter_and_base_tenants(stack, exports):
    rng = np.random.default_rng(3)
    audio = [pcm16(demo_speech(rng, 5.0)) for _ in range(3)]
    ward_dir, base_dir = stack.root / "models" / "ward" / "v1", stack.root / "exported" / "demo"
    # an adapter trained on the full model (random here) rides on it, in that model's own bank
    meta = ModelMeta.load(ward_dir)
    arrays = random_adapter_arrays(np.random.default_rng(5), meta.n_layers, meta.d_model, 8)
    with stack.admin() as c:
        a = c.publish(PushRequest("wardacc", "v1", "accent", "", save(arrays), model="ward@v1"))
        assert a.base_fingerprint == meta.fingerprint
        t = c.assign_model("lab", "ward@v1", adapter="wardacc@v1")
        assert (t.model, t.adapter) == ("ward@v1", "wardacc@v1")

    async def run():
        return await asyncio.gather(ws_stream(stack.gw.ws_url, KEYS["ward"], audio[0]),
                                    ws_stream(stack.gw.ws_url, KEYS["scot"], audio[1]),
                                    ws_stream(stack.gw.ws_url, KEYS["base"], audio[0]),
                                    ws_stream(stack.gw.ws_url, KEYS["lab"], audio[2]))

    (r_ward, _, ward), (r_scot, _, scot), (r_base, _, base), (r_lab, _, lab) = asyncio.run(run())
    assert (r_ward["model"], r_scot["model"], r_base["model"], r_lab["model"]) == ("ward@v1", "demo", "demo", "ward@v1")
    w = read_adapter(DEMO_REPO / "adapters" / "scottish" / "v1", None)
    scot_arrays = {"ln_weight": w.ln_weight, "ln_bias": w.ln_bias, "down": w.down, "up": w.up}
    assert ward == reference(ward_dir, audio[0])
    assert base == reference(base_dir, audio[0])
    assert scot == reference(base_dir, audio[1], scot_arrays)
    assert lab == reference(ward_dir, audio[2], arrays)
    assert ward != base and ward, (ward, base)  # the full model reads the same audio differently
    assert lab != reference(ward_dir, audio[2])  # its adapter made a difference
    models = stack.models()
    assert models["ward@v1"].instances_loaded == 1 and set(models["ward@v1"].tenants) == {"ward", "clinic", "lab"}
    assert models[""].base and models[""].pinned and models["ward@v1"].serving_bytes > 0
    # a batch job of the tenant, through OpenAI's client: the same model version
    import io

    import soundfile as sf
    from openai import OpenAI

    wav = io.BytesIO()
    sf.write(wav, audio[0], 16000, format="WAV", subtype="PCM_16")
    client = OpenAI(base_url=f"http://127.0.0.1:{stack.gw.http_port}/v1", api_key=KEYS["ward"], max_retries=0)
    assert "ward@v1" in {m.id for m in client.models.list()}
    for name in ("ward@v1", "whisper-1"):
        r = client.audio.transcriptions.create(file=("a.wav", wav.getvalue()), model=name)
        assert r.text.replace(" ", "") == ward.replace(" ", ""), name


def test_rollout_under_load_drops_no_stream_and_unloads_v1_once_drained(stack, exports):
    rng = np.random.default_rng(4)
    audio = [pcm16(demo_speech(rng, 4.0)) for _ in range(9)]
    with stack.admin() as c:
        c.assign_model("lab", "ward@v1")  # the tenants on ward@v1: ward, clinic, lab

    async def scenario():
        halfway = [asyncio.Event() for _ in range(8)]
        resume = asyncio.Event()
        live = [asyncio.create_task(ws_stream(stack.gw.ws_url, KEYS["ward"], audio[i], halfway=halfway[i],
                                              resume=resume)) for i in range(8)]
        await asyncio.wait_for(asyncio.gather(*(h.wait() for h in halfway)), 60)
        with stack.admin() as c:
            r = await asyncio.to_thread(c.publish_model, exports / "ward-v2", "ward", "v2", rollout=True)
        # v2 is loaded, the tenants moved; the 8 streams are still open on v1, halfway through
        new = await ws_stream(stack.gw.ws_url, KEYS["ward"], audio[8])
        models = stack.models()
        resume.set()
        return r, new, models, await asyncio.gather(*live)

    r, (r_new, _, new), during, done = asyncio.run(scenario())
    assert r.model.ref == "ward@v2" and sorted(r.moved_tenants) == ["clinic", "lab", "ward"]
    assert during["ward@v1"].instances_loaded == 1 and during["ward@v2"].instances_loaded == 1
    v1, v2 = stack.root / "models" / "ward" / "v1", stack.root / "models" / "ward" / "v2"
    for i, (ready, results, text) in enumerate(done):  # every stream finished, on the version it began on
        assert ready["model"] == "ward@v1" and text == reference(v1, audio[i]), i
    assert r_new["model"] == "ward@v2" and new == reference(v2, audio[8])
    assert reference(v1, audio[8]) != new  # the versions differ on this audio, so the check has teeth
    deadline = time.monotonic() + 20
    while stack.models()["ward@v1"].instances_loaded and time.monotonic() < deadline:
        time.sleep(0.5)
    import tritonclient.grpc as gc

    client = gc.InferenceServerClient(stack.triton.grpc_url)
    assert not client.is_model_ready("asr_streaming@ward@v1"), "v1 was not unloaded after its streams drained"
    assert client.is_model_ready("asr_streaming@ward@v2")
    assert "model ward@v1 unloaded" in stack.gw.log()


# -- bad input: clear errors, nothing that serves is touched ------------------------------------------

def _upload(stack: Stack, folder: Path, name: str, version: str, mangle) -> grpc.RpcError:
    files = export_files(folder)
    header = pb.PublishModelHeader(name=name, version=version, files=[
        pb.ModelFile(path=p, size_bytes=f.size_bytes, sha256=f.sha256) for p, f in files.items()])
    chunks = mangle(list(model_chunks(folder, header)))
    with grpc.insecure_channel(stack.gw.admin_url, options=[("grpc.max_send_message_length", 64 << 20)]) as ch:
        with pytest.raises(grpc.RpcError) as e:
            pb_grpc.AdminStub(ch).PublishModel(iter(chunks), metadata=[("x-admin-token", ADMIN_TOKEN)], timeout=120)
    return e.value


def test_a_partial_or_corrupt_model_upload_is_refused_and_nothing_changes(stack, exports):
    before, tenants = snapshot(stack.root / "models"), stack.tenants_text()
    # the client stops after half the chunks
    err = _upload(stack, exports / "ward-v2", "ward", "v7", lambda cs: cs[:len(cs) // 2])
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "incomplete" in err.details(), err.details()
    assert "bytes arrived" in err.details()

    def flip(cs):  # one bit of the weights flipped on the way
        for c in cs:
            if c.path == "weights.bin":
                c.data = bytes([c.data[0] ^ 1]) + c.data[1:]
                break
        return cs

    err = _upload(stack, exports / "ward-v2", "ward", "v7", flip)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "hash_mismatch" in err.details(), err.details()
    assert "weights.bin" in err.details()
    err = _upload(stack, exports / "ward-v2", "ward", "v7", lambda cs: [cs[0], *[c for c in cs[1:] if c.offset],
                                                                            *[c for c in cs[1:] if not c.offset]])
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "in order" in err.details(), err.details()
    assert snapshot(stack.root / "models") == before and stack.tenants_text() == tenants
    # serving goes on
    pcm = pcm16(demo_speech(np.random.default_rng(6), 3.0))
    _, _, text = asyncio.run(ws_stream(stack.gw.ws_url, KEYS["base"], pcm))
    assert text == reference(stack.root / "exported" / "demo", pcm)


def test_an_adapter_of_another_base_is_refused_at_assignment(stack):
    tenants = stack.tenants_text()
    with stack.admin() as c:
        with pytest.raises(AdminClientError) as e:  # scottish was trained on the base model
            c.assign_model("base", "ward@v1", adapter="scottish@v1")
        assert e.value.code == "FAILED_PRECONDITION" and "wrong_base" in str(e.value), e.value
        assert "trained on base model" in str(e.value)
        with pytest.raises(AdminClientError) as e:  # a tenant on a full model: the same adapter, the same answer
            c.assign("ward", "scottish@v1")
        assert e.value.code == "FAILED_PRECONDITION" and "wrong_base" in str(e.value), e.value
        with pytest.raises(AdminClientError) as e:
            c.assign_model("base", "ward@v99")
        assert e.value.code == "NOT_FOUND", e.value
    assert stack.tenants_text() == tenants


def test_a_vocabulary_the_tenants_boost_phrases_need_is_checked(stack, exports):
    tenants, before = stack.tenants_text(), snapshot(stack.root / "models")
    with stack.admin() as c:
        # a rollout to a version whose vocabulary cannot write "zyrtec" (a tenant's phrase): nothing stored
        with pytest.raises(AdminClientError) as e:
            c.publish_model(exports / "bpe", "ward", "v3", rollout=True)
        assert e.value.code == "FAILED_PRECONDITION" and "vocabulary" in str(e.value), e.value
        assert "clinic" in str(e.value) and "zyrtec" in str(e.value) and "nothing stored" in str(e.value)
        assert snapshot(stack.root / "models") == before
        # stored on its own, it is refused for that tenant, and taken by one without the phrase
        c.publish_model(exports / "bpe", "bpe", "v1", rollout=False)
        with pytest.raises(AdminClientError) as e:
            c.assign_model("clinic", "bpe@v1")
        assert e.value.code == "FAILED_PRECONDITION" and "zyrtec" in str(e.value), e.value
        assert stack.tenants_text() == tenants
        assert c.assign_model("base", "bpe@v1").model == "bpe@v1"
        c.assign_model("base", "")
        clinic = {t.name: t for t in c.tenants()}["clinic"].model
    ready, _, text = asyncio.run(ws_stream(stack.gw.ws_url, KEYS["clinic"], pcm := pcm16(demo_speech(
        np.random.default_rng(7), 3.0))))
    assert ready["model"] == clinic and text == reference(stack.root / "models" / clinic.replace("@", "/"), pcm)


def test_model_versions_load_again_after_triton_restarts(stack):
    """A restarted Triton comes back with the base model only; the next stream on a version loads it."""
    with stack.admin() as c:
        model = {t.name: t for t in c.tenants()}["ward"].model
    stack.triton.stop()
    stack.triton.start(timeout=240)
    pcm = pcm16(demo_speech(np.random.default_rng(9), 3.0))
    deadline, last = time.monotonic() + 60, None
    while time.monotonic() < deadline:  # until the gateway has admitted the instance again
        try:
            ready, _, text = asyncio.run(ws_stream(stack.gw.ws_url, KEYS["ward"], pcm))
            break
        except Exception as e:  # noqa: BLE001 - refused (unavailable) while the instance rejoins
            last = e
            time.sleep(0.5)
    else:
        raise AssertionError(f"no stream on {model} after the restart: {last}")
    assert ready["model"] == model and text == reference(stack.root / "models" / model.replace("@", "/"), pcm)
    assert stack.models()[model].instances_loaded == 1


# -- the memory budget ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def budget_stack(tmp_path_factory, exports):
    """A gateway whose budget holds the base and one more model version, on a Triton of its own."""
    from brogue.models import estimate_footprint
    from brogue.server.model_fleet import served_settings
    from brogue.server.triton_models import VersionModels

    tmp = tmp_path_factory.mktemp("budget")
    root = tmp / "repo"
    model_config(root, "asr_streaming")
    settings = served_settings(VersionModels(root).settings())
    base = estimate_footprint(DEMO_REPO / "exported" / "demo", **settings).total
    version = estimate_footprint(exports / "ward-v1", **settings).total
    shutil.rmtree(root)
    budget_mib = (base + 1.5 * version) / MiB
    s = _start(tmp, {"base": {}, "ward": {"model": "lru@v1"}, "lab": {"model": "lru@v2"}},
               extra=("--memory-budget-mb", f"{budget_mib:.1f}"))
    s.sizes = (base, version, budget_mib)
    with s.admin() as c:
        c.publish_model(exports / "ward-v1", "lru", "v1", rollout=False)
        c.publish_model(exports / "ward-v2", "lru", "v2", rollout=False)
    yield s
    _stop(s)


def test_versions_make_room_least_recently_used_and_pinned_ones_stay(budget_stack):
    s = budget_stack
    rng = np.random.default_rng(8)
    pcm = pcm16(demo_speech(rng, 3.0))
    v1, v2 = s.root / "models" / "lru" / "v1", s.root / "models" / "lru" / "v2"
    _, _, text = asyncio.run(ws_stream(s.gw.ws_url, KEYS["ward"], pcm))
    assert text == reference(v1, pcm)
    m = s.models()
    assert (m["lru@v1"].instances_loaded, m["lru@v2"].instances_loaded) == (1, 0)
    _, _, text = asyncio.run(ws_stream(s.gw.ws_url, KEYS["lab"], pcm))  # v1 is idle: it makes room
    assert text == reference(v2, pcm)
    m = s.models()
    assert (m["lru@v1"].instances_loaded, m["lru@v2"].instances_loaded) == (0, 1)
    assert "model lru@v1 unloaded" in s.gw.log() and "to make room for lru@v2" in s.gw.log()
    with s.admin() as c:
        assert c.pin_model("lru@v2").pinned
        # pinned v2 and the base leave no room for v1: its tenant is refused, with the numbers
        refused = asyncio.run(refused_stream(s.gw.ws_url, KEYS["ward"]))
        assert refused["type"] == "error" and refused["code"] == "capacity" and refused["close_code"] == 1013
        assert "lru@v1 needs" in refused["message"] and "MiB" in refused["message"], refused
        assert s.models()["lru@v2"].instances_loaded == 1  # the pinned version stayed
        c.pin_model("lru@v2", False)
    _, _, text = asyncio.run(ws_stream(s.gw.ws_url, KEYS["ward"], pcm))
    assert text == reference(v1, pcm)


def test_a_model_that_does_not_fit_the_budget_is_refused_at_publish(budget_stack, exports):
    s = budget_stack
    before, tenants = snapshot(s.root / "models"), s.tenants_text()
    with s.admin() as c:
        c.pin_model("lru@v1")
        try:
            with pytest.raises(AdminClientError) as e:
                c.publish_model(exports / "ward-v2", "lru", "v3", rollout=False)
        finally:
            c.pin_model("lru@v1", False)
    assert e.value.code == "RESOURCE_EXHAUSTED" and "too_big" in str(e.value), e.value
    base, version, budget = s.sizes
    assert f"{budget:.0f} MiB budget" in str(e.value) and "MiB short" in str(e.value), e.value
    assert snapshot(s.root / "models") == before and s.tenants_text() == tenants
