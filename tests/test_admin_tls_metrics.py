"""Admin API, tenants hot reload, loopback admin, TLS and /metrics, end to end.

A real tritonserver (nvidia-pytriton's binary) serves the committed demo model; `brogue serve
--triton-url ...` runs as a subprocess (the ``gateway`` fixture, and a second one with TLS). Streams go
over WebSocket and their transcripts are compared with the in-process reference runner streaming the
same audio with the same adapter. Nothing here skips: a missing tool or service fails the test.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pickle
import socket
import ssl
import subprocess
import sys
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
from safetensors.numpy import save as safetensors_bytes
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from brogue.adapters import write_adapter
from brogue.clients.admin import AdminClient, AdminClientError, PushRequest
from brogue.engine.metadata import ModelMeta
from brogue.server.protos import brogue_admin_pb2 as pb
from brogue.server.protos import brogue_admin_pb2_grpc as pb_grpc
from brogue.server.tenants import key_hash
from conftest import (ADMIN_TOKEN, DEMO_KEYS, demo_speech, random_adapter_arrays, reference_run, start_gateway,
                      stop_gateway)
from gateway_clients import bearer, pcm16, ws_stream

pytestmark = pytest.mark.nemo

NEW_KEY = "key-newcomer-5555"
WRONG_TOKENS = ["not-the-admin-token-7777"]
REPO = Path(__file__).resolve().parent.parent


# -- helpers ---------------------------------------------------------------------------------------

def reference_text(demo_repo, pcm: np.ndarray, arrays=None) -> str:
    """What the reference runner transcribes from ``pcm`` (as the gateway decodes it) with ``arrays``."""
    runner, tokens = reference_run(demo_repo, pcm.astype(np.float32) / 32768.0, arrays)
    return runner.detok.decode(tokens)


def admin(gw, token=ADMIN_TOKEN, **kw) -> AdminClient:
    return AdminClient(gw.admin_url, token, **kw)


def store_snapshot(store: Path) -> list:
    return sorted((str(p.relative_to(store)), p.stat().st_size if p.is_file() else -1)
                  for p in store.rglob("*"))


def push(gw, name, arrays, version="v1", description=""):
    with admin(gw) as c:
        return c.publish(PushRequest(name, version, "test", description, safetensors_bytes(arrays)))


def cli(*args, env_token=ADMIN_TOKEN):
    env = {**os.environ, "BROGUE_ADMIN_TOKEN": env_token}
    return subprocess.run([sys.executable, "-m", "brogue.cli", "adapters", *args], capture_output=True,
                          text=True, env=env, timeout=120, cwd=REPO)


def metrics_text(port: int) -> str:
    return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()


def metric_value(text: str, name: str, **labels) -> float:
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        metric, _, label_text = head.partition("{")
        if metric != name:
            continue
        found = dict(kv.split("=", 1) for kv in label_text.rstrip("}").split(",") if kv)
        if all(found.get(k) == f'"{v}"' for k, v in labels.items()):
            return float(value)
    raise AssertionError(f"no sample {name}{labels} in /metrics:\n{text}")


# -- admin publish ---------------------------------------------------------------------------------

def test_publish_validates_and_refuses_bad_adapters_without_touching_the_store(gateway, demo_repo):
    gw, store = gateway, demo_repo.store_dir
    rng = np.random.default_rng(21)
    good = random_adapter_arrays(rng, 6, 144, 8)

    before = store_snapshot(store)
    garbage = b"\x10\x00\x00\x00\x00\x00\x00\x00this is not a safetensors file"
    bad_cases = {
        "not_safetensors": garbage,
        "pickle": pickle.dumps({"down": [1.0, 2.0]}),
        "d_model": safetensors_bytes(random_adapter_arrays(rng, 6, 32, 8)),
        "layers": safetensors_bytes(random_adapter_arrays(rng, 5, 144, 8)),
        "too_large": safetensors_bytes(random_adapter_arrays(rng, 6, 144, 128)),
        "non_finite": safetensors_bytes({**good, "up": np.full_like(good["up"], np.nan)}),
        "tensors": safetensors_bytes({k: v for k, v in good.items() if k != "up"}),
        "truncated": safetensors_bytes(good)[:-100],
    }
    with admin(gw) as c:
        for case, blob in bad_cases.items():
            with pytest.raises(AdminClientError) as e:
                c.publish(PushRequest("badone", "v1", "", "", blob))
            assert e.value.code == "INVALID_ARGUMENT", (case, e.value.code, str(e.value))
            assert "brogue-admin-" not in str(e.value)  # the message names the upload, not a temporary file
            if case not in ("pickle", "truncated"):
                assert case in str(e.value), (case, str(e.value))
        with pytest.raises(AdminClientError) as e:  # trained on another base model
            c.publish(PushRequest("badone", "v1", "", "", safetensors_bytes(good), base_fingerprint="f" * 64))
        assert e.value.code == "INVALID_ARGUMENT" and "wrong_base" in str(e.value)
        with pytest.raises(AdminClientError) as e:
            c.publish(PushRequest("Bad Name!", "v1", "", "", safetensors_bytes(good)))
        assert e.value.code == "INVALID_ARGUMENT"
    assert store_snapshot(store) == before, "a refused adapter changed the store"

    # wrong or missing token: UNAUTHENTICATED, for every call, and nothing changes
    for token in WRONG_TOKENS:
        with admin(gw, token) as c:
            for call in (lambda: c.publish(PushRequest("adm-a", "v1", "", "", safetensors_bytes(good))),
                         lambda: c.assign("scot", demo_repo.refs["med"]), c.tenants, c.adapters):
                with pytest.raises(AdminClientError) as e:
                    call()
                assert e.value.code == "UNAUTHENTICATED", e.value
    with grpc.insecure_channel(gw.admin_url) as ch:
        with pytest.raises(grpc.RpcError) as e:
            pb_grpc.AdminStub(ch).ListTenants(pb.ListTenantsRequest(), timeout=10)
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
        # the other header form works
        r = pb_grpc.AdminStub(ch).ListTenants(pb.ListTenantsRequest(), timeout=10,
                                              metadata=(("authorization", f"Bearer {ADMIN_TOKEN}"),))
        assert {t.name for t in r.tenants} == set(DEMO_KEYS)
    assert store_snapshot(store) == before

    # a valid adapter is stored, validated, and listed
    m = push(gw, "adm-a", good, description="admin test")
    meta = ModelMeta.load(demo_repo.model_dir)
    assert (m.ref, m.dim, m.n_layers, m.d_model) == ("adm-a@v1", 8, 6, 144)
    assert m.base_fingerprint == meta.fingerprint
    assert (store / "adm-a" / "v1" / "adapter.safetensors").read_bytes() == safetensors_bytes(good)
    with admin(gw) as c:
        listed = {a.ref: a for a in c.adapters()}
        assert listed["adm-a@v1"].sha256 == m.sha256 and not listed["adm-a@v1"].error
        assert listed[demo_repo.refs["scot"]].tenants == ["scot"]
        # a duplicate is refused, whatever its content: entries are immutable
        with pytest.raises(AdminClientError) as e:
            c.publish(PushRequest("adm-a", "v1", "", "", safetensors_bytes(random_adapter_arrays(rng, 6, 144, 8))))
        assert e.value.code == "ALREADY_EXISTS", e.value
        # no version: a content version
        m2 = c.publish(PushRequest("adm-b", "", "", "", safetensors_bytes(good)))
        assert m2.version.startswith("sha-") and m2.sha256 == m.sha256
        # assign refuses what is not in the store, and unknown tenants
        with pytest.raises(AdminClientError) as e:
            c.assign("scot", "adm-a@v9")
        assert e.value.code == "NOT_FOUND" and "v1" in str(e.value), e.value
        with pytest.raises(AdminClientError) as e:
            c.assign("nobody", "adm-a@v1")
        assert e.value.code == "NOT_FOUND"
        with pytest.raises(AdminClientError) as e:
            c.assign("scot", "no-version")
        assert e.value.code == "INVALID_ARGUMENT"
    assert (store / "adm-a" / "v1" / "adapter.safetensors").read_bytes() == safetensors_bytes(good)


def test_cli_push_assign_list(gateway, demo_repo, tmp_path):
    gw = gateway
    arrays = random_adapter_arrays(np.random.default_rng(31), 6, 144, 4)
    meta = ModelMeta.load(demo_repo.model_dir)
    entry = tmp_path / "entry"
    write_adapter(entry, arrays, name="cli-entry", version="v3", kind="accent",
                  base_fingerprint=meta.fingerprint)
    r = cli("push", str(entry), "--admin", gw.admin_url)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "cli-entry@v3"
    # a bare tensor file with metadata flags; the token from --token this time
    tensors = tmp_path / "adapter.safetensors"
    tensors.write_bytes(safetensors_bytes(arrays))
    r = cli("push", str(tensors), "--name", "cli-file", "--version", "v1", "--kind", "domain",
            "--admin", gw.admin_url, "--token", ADMIN_TOKEN, env_token="")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "cli-file@v1"
    r = cli("push", str(tensors), "--name", "cli-file", "--version", "v1", "--admin", gw.admin_url)
    assert r.returncode != 0 and "ALREADY_EXISTS" in r.stderr, r.stderr
    r = cli("push", str(tensors), "--name", "cli-x", "--admin", gw.admin_url, env_token="wrong")
    assert r.returncode != 0 and "UNAUTHENTICATED" in r.stderr, r.stderr
    # a damaged entry is refused before anything is sent
    bad = tmp_path / "bad"
    write_adapter(bad, arrays, name="cli-bad", version="v1", base_fingerprint=meta.fingerprint)
    (bad / "adapter.safetensors").write_bytes((bad / "adapter.safetensors").read_bytes()[:-8] + b"\0" * 8)
    r = cli("push", str(bad), "--admin", gw.admin_url)
    assert r.returncode != 0 and "SHA-256" in r.stderr, r.stderr

    r = cli("assign", "carib", "cli-file@v1", "--admin", gw.admin_url)
    assert r.returncode == 0, r.stderr
    r = cli("list", "--json", "--admin", gw.admin_url)
    assert r.returncode == 0, r.stderr
    listing = json.loads(r.stdout)
    adapters = {a["ref"]: a for a in listing["adapters"]}
    assert adapters["cli-entry@v3"]["kind"] == "accent" and adapters["cli-entry@v3"]["error"] is None
    assert adapters["cli-file@v1"]["tenants"] == ["carib"]
    assert {t["name"]: t["adapter"] for t in listing["tenants"]}["carib"] == "cli-file@v1"
    r = cli("list", "--admin", gw.admin_url)  # the table form
    assert r.returncode == 0 and "cli-entry@v3" in r.stdout, r.stderr
    r = cli("assign", "carib", demo_repo.refs["carib"], "--admin", gw.admin_url)
    assert r.returncode == 0, r.stderr


def test_push_carries_a_domain_lm_and_refuses_a_bad_one(gateway, demo_repo, tmp_path):
    from brogue.engine.lm import read_text

    gw, store = gateway, demo_repo.store_dir
    arrays = random_adapter_arrays(np.random.default_rng(41), 6, 144, 4)
    meta = ModelMeta.load(demo_repo.model_dir)
    entry = tmp_path / "entry"
    write_adapter(entry, arrays, name="lm-entry", version="v1", kind="domain", base_fingerprint=meta.fingerprint,
                  lm_sentences=["give warfarin daily", "stop the heparin"], lm_weight=0.3)
    r = cli("push", str(entry), "--admin", gw.admin_url)
    assert r.returncode == 0, r.stderr
    served = store / "lm-entry" / "v1"
    assert read_text(served / "lm.txt.gz") == ["give warfarin daily", "stop the heparin"]
    assert json.loads((served / "manifest.json").read_text())["lm"]["weight"] == 0.3
    # a bare tensor file with a sentence file
    tensors = tmp_path / "adapter.safetensors"
    tensors.write_bytes(safetensors_bytes(arrays))
    (tmp_path / "domain.txt").write_text("Metformin twice daily\n\nwarfarin  five mg\n")
    r = cli("push", str(tensors), "--name", "lm-file", "--version", "v1", "--domain-lm", str(tmp_path / "domain.txt"),
            "--admin", gw.admin_url)
    assert r.returncode == 0, r.stderr
    assert read_text(store / "lm-file" / "v1" / "lm.txt.gz") == ["metformin twice daily", "warfarin five mg"]
    r = cli("list", "--json", "--admin", gw.admin_url)
    adapters = {a["ref"]: a for a in json.loads(r.stdout)["adapters"]}
    assert adapters["lm-file@v1"]["domain_lm_sentences"] == 2 and adapters["lm-entry@v1"]["domain_lm_sentences"] == 2
    before = store_snapshot(store)
    with admin(gw) as c:
        for text, weight, what in (("a b c", 1.5, "domain_lm_weight"), ("  \n ", 0.0, "no sentence"),
                                   ("x" * (16 << 20) + "y", 0.0, "over")):
            with pytest.raises(AdminClientError) as e:
                c.publish(PushRequest("lm-bad", "v1", "", "", safetensors_bytes(arrays), "", None, text, weight))
            assert e.value.code == "INVALID_ARGUMENT" and what in str(e.value), e.value
    assert store_snapshot(store) == before


# -- assign during live streams -------------------------------------------------------------------

def test_assign_during_two_live_streams_keeps_them_and_switches_new_streams(gateway, demo_repo):
    gw = gateway
    rng = np.random.default_rng(41)
    new_arrays = random_adapter_arrays(rng, 6, 144, 8)
    new_ref = push(gw, "adm-live", new_arrays).ref
    old_ref = demo_repo.refs["scot"]
    audios = [pcm16(demo_speech(rng, 3.0)) for _ in range(3)]

    async def scenario():
        halfway = [asyncio.Event(), asyncio.Event()]
        resume = asyncio.Event()
        live = [asyncio.create_task(ws_stream(gw.ws_url, DEMO_KEYS["scot"], audios[i], halfway=halfway[i],
                                              resume=resume)) for i in range(2)]
        await asyncio.wait_for(asyncio.gather(*(h.wait() for h in halfway)), 60)
        with admin(gw) as c:
            t = await asyncio.to_thread(c.assign, "scot", new_ref)
        assert (t.adapter, t.live_streams) == (new_ref, 2), t
        # A new stream starts while the two are still live, then they all go on together.
        new = asyncio.create_task(ws_stream(gw.ws_url, DEMO_KEYS["scot"], audios[2]))
        await asyncio.sleep(0.3)
        resume.set()
        return await asyncio.gather(*live, new)

    try:
        results = asyncio.run(scenario())
    finally:
        with admin(gw) as c:
            c.assign("scot", old_ref)
    (r1, _, t1), (r2, _, t2), (r3, _, t3) = results
    assert r1["adapter"] == r2["adapter"] == old_ref and r3["adapter"] == new_ref, (r1, r2, r3)
    old, new = demo_repo.arrays["scot"], new_arrays
    want = [reference_text(demo_repo, audios[0], old), reference_text(demo_repo, audios[1], old),
            reference_text(demo_repo, audios[2], new)]
    assert [t1, t2, t3] == want
    assert all(want), want
    # the adapters make a difference on this audio, else the comparison proves nothing
    assert reference_text(demo_repo, audios[2], old) != want[2]
    assert reference_text(demo_repo, audios[0], new) != want[0]


def test_a_tenant_cannot_choose_an_adapter(gateway, demo_repo):
    """Adapters come from the tenants file only: a config field naming one is refused, a query
    parameter naming one is ignored."""
    gw = gateway
    pcm = pcm16(demo_speech(np.random.default_rng(45), 1.0))

    async def scenario():
        async with connect(gw.ws_url, additional_headers=bearer(DEMO_KEYS["scot"])) as ws:
            await ws.send(json.dumps({"type": "config", "sample_rate": 16000, "encoding": "pcm16",
                                      "adapter": demo_repo.refs["carib"]}))
            msg = json.loads(await ws.recv())
            assert (msg["type"], msg["code"]) == ("error", "bad_request") and "adapter" in msg["message"], msg
        return await ws_stream(gw.ws_url + f"?adapter={demo_repo.refs['carib']}", DEMO_KEYS["scot"], pcm)

    ready, _, text = asyncio.run(scenario())
    assert ready["adapter"] == demo_repo.refs["scot"]
    assert text == reference_text(demo_repo, pcm, demo_repo.arrays["scot"])


# -- tenants file hot reload -------------------------------------------------------------------------

def test_tenants_file_edits_apply_without_restart(gateway, demo_repo):
    gw = gateway
    pcm = pcm16(demo_speech(np.random.default_rng(51), 1.0))

    async def refused(key):
        with pytest.raises(InvalidStatus) as e:
            await ws_stream(gw.ws_url, key, pcm)
        assert e.value.response.status_code == 401

    asyncio.run(refused(NEW_KEY))
    original = gw.tenants_file.read_text()
    gw.tenants_file.write_text(original + f'\n[tenants.newcomer]\napi_keys_sha256 = ["{key_hash(NEW_KEY)}"]\n'
                                          f'adapter = "{demo_repo.refs["med"]}"\nmax_streams = 1\n')
    try:
        ready, _, text = asyncio.run(ws_stream(gw.ws_url, NEW_KEY, pcm))
        assert (ready["tenant"], ready["adapter"]) == ("newcomer", demo_repo.refs["med"])
        assert text == reference_text(demo_repo, pcm, demo_repo.arrays["med"])
        # a bad edit is logged and ignored: the previous tenants stay in force
        gw.tenants_file.write_text(original + "\n[tenants.broken\n")
        ready, _, _ = asyncio.run(ws_stream(gw.ws_url, NEW_KEY, pcm))
        assert ready["tenant"] == "newcomer"
    finally:
        gw.tenants_file.write_text(original)
    asyncio.run(refused(NEW_KEY))  # the key is revoked by removing it, again without a restart
    ready, _, _ = asyncio.run(ws_stream(gw.ws_url, DEMO_KEYS["base"], pcm))
    assert (ready["tenant"], ready["adapter"]) == ("base", None)


# -- admin bound to loopback ---------------------------------------------------------------------------

def _listen_addresses(port: int) -> list[str]:
    """Local addresses of the TCP sockets listening on ``port`` (from /proc/net/tcp and tcp6)."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            addr, state = fields[1], fields[3]
            host, _, p = addr.partition(":")
            if state == "0A" and int(p, 16) == port:  # 0A: LISTEN
                found.append(host)
    return found


def _non_loopback_address() -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.254.254.254", 9))  # no packet is sent; this picks the outgoing interface
            ip = s.getsockname()[0]
        except OSError:
            ip = None
    if ip and not ip.startswith("127."):
        return ip
    try:
        out = subprocess.run(["hostname", "-I"], capture_output=True, text=True, timeout=5).stdout.split()
    except OSError:
        out = []
    return next((a for a in out if "." in a and not a.startswith("127.")), None)


def test_admin_port_is_bound_to_loopback(gateway):
    gw = gateway
    assert gw.admin_url.split(":")[0] == "127.0.0.1"
    # 127.0.0.1, as IPv4 or IPv4-mapped IPv6 (gRPC listens on tcp6); never 0.0.0.0 or ::
    loopback = {"0100007F", "0000000000000000FFFF00000100007F", "00000000000000000000000001000000"}
    listening = _listen_addresses(gw.admin_port)
    assert listening and set(listening) <= loopback, listening
    ip = _non_loopback_address()
    print(f"non-loopback address of this machine: {ip}")
    if ip is not None:
        with pytest.raises(OSError):
            socket.create_connection((ip, gw.admin_port), timeout=3).close()
    with admin(gw) as c:  # while loopback answers
        assert {t.name for t in c.tenants()} >= set(DEMO_KEYS)


# -- TLS -------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tls_gateway(demo_repo, triton_server, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tls")
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    r = subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
                        "-out", str(cert), "-days", "2", "-subj", "/CN=localhost",
                        "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    gw = start_gateway(demo_repo, triton_server.grpc_url, tmp,
                       extra=["--tls-cert", str(cert), "--tls-key", str(key)])
    gw.triton, gw.cert = triton_server, cert
    yield gw
    stop_gateway(gw)


def test_tls_websocket_grpc_and_admin(tls_gateway, demo_repo):
    gw = tls_gateway
    wss = gw.ws_url.replace("ws://", "wss://")
    pcm = pcm16(demo_speech(np.random.default_rng(61), 1.5))
    ctx = ssl.create_default_context(cafile=str(gw.cert))
    ready, _, text = asyncio.run(ws_stream(wss, DEMO_KEYS["carib"], pcm, ssl_ctx=ctx))
    assert ready["adapter"] == demo_repo.refs["carib"]
    assert text == reference_text(demo_repo, pcm, demo_repo.arrays["carib"]) and text

    async def fails(url, ssl_ctx=None):
        try:
            await ws_stream(url, DEMO_KEYS["carib"], pcm, ssl_ctx=ssl_ctx)
        except Exception as e:  # noqa: BLE001 - any failure to connect will do; success will not
            return e
        raise AssertionError(f"{url} worked")

    print("plain ws:", repr(asyncio.run(fails(gw.ws_url))))
    err = asyncio.run(fails(wss, ssl.create_default_context()))  # the system CAs do not know this certificate
    assert isinstance(err, ssl.SSLCertVerificationError), repr(err)

    # gRPC (Riva port) with TLS: the health service answers; plain text does not
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    creds = grpc.ssl_channel_credentials(root_certificates=gw.cert.read_bytes())
    with grpc.secure_channel(gw.grpc_url, creds) as ch:
        reply = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""), timeout=15)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    with grpc.insecure_channel(gw.grpc_url) as ch:
        with pytest.raises(grpc.RpcError) as e:
            health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        assert e.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED), e.value

    # the admin port is TLS too: the CLI with --tls-ca works, without it fails
    r = cli("list", "--json", "--admin", gw.admin_url, "--tls-ca", str(gw.cert))
    assert r.returncode == 0, r.stderr
    assert {t["name"] for t in json.loads(r.stdout)["tenants"]} == set(DEMO_KEYS)
    with AdminClient(gw.admin_url, ADMIN_TOKEN, timeout=5) as c:
        with pytest.raises(AdminClientError) as e:
            c.tenants()
        assert e.value.code in ("UNAVAILABLE", "DEADLINE_EXCEEDED"), e.value


# -- metrics and logs ---------------------------------------------------------------------------------

def test_metrics_after_traffic_and_errors(gateway, demo_repo):
    gw = gateway
    rng = np.random.default_rng(71)
    # speech, silence, speech, with the default endpointing knobs
    audio = np.concatenate([demo_speech(rng, 1.5), np.zeros(32000, np.float32), demo_speech(rng, 1.5)])
    _, results, _ = asyncio.run(ws_stream(gw.ws_url, DEMO_KEYS["scot"], pcm16(audio), endpointing={}))
    kinds = [r["type"] for r in results]
    print("finals:", kinds.count("final"), "partials:", kinds.count("partial"))

    async def errors():
        with pytest.raises(InvalidStatus) as e:
            await ws_stream(gw.ws_url, "wrong-key-3333", pcm16(audio[:1600]))
        assert e.value.response.status_code == 401
        async with connect(gw.ws_url, additional_headers=bearer(DEMO_KEYS["base"])) as ws:
            await ws.send("{not json")
            msg = json.loads(await ws.recv())
            assert (msg["type"], msg["code"]) == ("error", "bad_request"), msg
        with pytest.raises(InvalidStatus) as e:  # a key in the query string (browsers), wrong
            async with connect(gw.ws_url + "?api_key=query-key-4444"):
                pass
        assert e.value.response.status_code == 401
        # and a right one, in the query string too: still never logged
        async with connect(gw.ws_url + f"?api_key={DEMO_KEYS['base']}") as ws:
            await ws.send(json.dumps({"type": "config", "sample_rate": 99}))
            msg = json.loads(await ws.recv())
            assert (msg["type"], msg["code"]) == ("error", "bad_request"), msg
            assert "sample_rate" in msg["message"], msg

    asyncio.run(errors())
    with admin(gw, WRONG_TOKENS[0]) as c:
        with pytest.raises(AdminClientError):
            c.tenants()
    text = metrics_text(gw.http_port)
    assert metric_value(text, "brogue_active_streams", tenant="scot", api="ws") == 0  # all ended
    assert metric_value(text, "brogue_time_to_first_partial_seconds_count") > 0
    # Every final is timed, those at the end of each stream's audio too.
    assert metric_value(text, "brogue_end_of_speech_to_final_seconds_count") >= kinds.count("final") >= 1
    assert "brogue_end_of_speech_to_final_seconds_bucket{le=" in text
    assert metric_value(text, "brogue_real_time_factor_count") > 0
    assert metric_value(text, "brogue_real_time_factor_sum") > 0
    assert metric_value(text, "brogue_errors_total", kind="unauthenticated", api="ws") >= 1
    assert metric_value(text, "brogue_errors_total", kind="bad_request", api="ws") >= 1
    assert metric_value(text, "brogue_errors_total", kind="unauthenticated", api="admin") >= 1
    print("\n".join(ln for ln in text.splitlines() if ln.startswith("brogue_") and "_bucket" not in ln))


def test_active_streams_gauge_counts_live_streams(gateway):
    gw = gateway
    pcm = pcm16(demo_speech(np.random.default_rng(81), 2.0))

    async def scenario():
        halfway, resume = asyncio.Event(), asyncio.Event()
        task = asyncio.create_task(ws_stream(gw.ws_url, DEMO_KEYS["carib"], pcm, halfway=halfway,
                                             resume=resume))
        await asyncio.wait_for(halfway.wait(), 30)
        live = await asyncio.to_thread(metrics_text, gw.http_port)
        resume.set()
        await task
        return live

    live = asyncio.run(scenario())
    assert metric_value(live, "brogue_active_streams", tenant="carib", api="ws") == 1
    assert metric_value(metrics_text(gw.http_port), "brogue_active_streams", tenant="carib", api="ws") == 0


def test_logs_never_contain_keys_or_tokens(gateway, tls_gateway):
    """Each gateway sees every secret here (WebSocket key in the query string and in the header, a
    refused config after a right key, Riva metadata, admin tokens), logs its refusals, and never the
    secret: run alone, the test still sends them all."""
    secrets = [*DEMO_KEYS.values(), NEW_KEY, ADMIN_TOKEN, *WRONG_TOKENS, "wrong-key-3333", "query-key-4444"]

    async def present(url, ssl_ctx):
        for secret in secrets:
            for target, headers in ((f"{url}?api_key={secret}", None), (url, bearer(secret))):
                try:
                    async with connect(target, additional_headers=headers, ssl=ssl_ctx, open_timeout=10) as ws:
                        await ws.send(json.dumps({"type": "config", "sample_rate": 99}))  # refused: logged
                        await ws.recv()
                except InvalidStatus as e:
                    assert e.response.status_code == 401, secret

    from riva.client.proto import riva_asr_pb2 as rasr
    from riva.client.proto import riva_asr_pb2_grpc as rasr_grpc

    for gw in (gateway, tls_gateway):
        before = len(gw.log())
        tls = gw is tls_gateway
        ctx = ssl.create_default_context(cafile=str(gw.cert)) if tls else None
        asyncio.run(present(gw.ws_url.replace("ws://", "wss://") if tls else gw.ws_url, ctx))
        if not tls:
            for secret in secrets:
                with grpc.insecure_channel(gw.grpc_url) as ch:
                    call = rasr_grpc.RivaSpeechRecognitionStub(ch).Recognize
                    with pytest.raises(grpc.RpcError):  # no audio: refused after the key is read
                        call(rasr.RecognizeRequest(), metadata=[("x-api-key", secret)], timeout=10)
                with pytest.raises(AdminClientError) if secret != ADMIN_TOKEN else contextlib.nullcontext():
                    with admin(gw, secret) as c:
                        c.tenants()
        log = gw.log()
        assert len(log) - before > 500 and "bad_request" in log[before:], log[before:]  # the refusals were logged
        for secret in secrets:
            assert secret not in log, f"{secret!r} in the log of {gw.log_file}"


# -- the demo tenants file -------------------------------------------------------------------------

def test_demo_tenants_file_keys_docs_and_store_agree():
    """model_repo/tenants.toml: its documented demo keys open their tenants, the documented admin token
    works, every adapter it names is in model_repo/adapters and validates, and docs/admin.md lists
    the same keys."""
    from brogue.adapters import BaseSpec
    from brogue.adapters.store import AdapterStore
    from brogue.server.tenants import TenantRegistry

    path = REPO / "model_repo" / "tenants.toml"
    text = path.read_text()
    registry = TenantRegistry(path)
    tenants = registry.tenants()
    table = [line[1:].split() for line in text.splitlines()
             if line.startswith("#   ") and "brogue-demo-" in line]
    documented = {row[0]: row[1] for row in table}
    assert "base" in documented and set(documented) == set(tenants), (documented, tenants)
    for name, key in documented.items():
        assert registry.authenticate(key).name == name
    admin_line = next(line for line in text.splitlines() if line.startswith("# Admin token"))
    registry.check_admin(admin_line.split(":")[-1].strip())
    assert tenants["base"].adapter == ""
    store = AdapterStore(REPO / "model_repo" / "adapters")
    model_dir = REPO / "model_repo" / "exported" / "demo"
    for t in tenants.values():
        if t.adapter:
            store.resolve(t.adapter)  # in the store, else the gateway would refuse the tenant's streams
            assert t.adapter.split("@")[0] == t.name  # one tenant per committed adapter, named after it
            if (model_dir / "model.json").exists():
                meta = ModelMeta.load(model_dir)
                store.load(t.adapter, BaseSpec(meta.fingerprint, meta.n_layers, meta.d_model,
                                               meta.max_adapter_dim))
    committed = {e.ref.name for e in store.list()}
    assert committed <= set(tenants), f"adapters without a demo tenant: {committed - set(tenants)}"
    docs = (REPO / "docs" / "admin.md").read_text()
    for name, key in documented.items():
        assert f"| `{name}` | `{key}` |" in docs, f"docs/admin.md does not list tenant {name}'s demo key"
    assert admin_line.split(":")[-1].strip() in docs
