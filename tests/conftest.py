"""Shared fixtures: the committed demo export with its adapters in a store, and a real
tritonserver and gateway on it.

Serving tests run on what users run: ``model_repo/exported/demo`` and its trained adapters, on
real speech (the committed demo clips), with no NeMo and no torch. Tests of the export itself make
their own models (tests/nemo_reference.py, ``export.configs.build_model``).
"""

from __future__ import annotations

import functools
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from brogue.server.gateway_process import GatewayAddresses, wait_until_healthy

REPO = Path(__file__).resolve().parent.parent
DEMO_REPO = REPO / "model_repo"
DEMO_CLIPS = REPO / "tests" / "data" / "demo"
# short test names -> the committed, trained adapters; the others are random (a distinct, garbling
# effect each), so that a bank fuller than the demo's five can be tested
TRAINED = {"scot": "scottish", "carib": "caribbean", "med": "medical", "indian": "indian", "ger": "german"}
ADAPTER_NAMES = [*TRAINED, "span", "legal", "fin"]


@dataclass
class ServingRepo:
    """A Triton model repository like model_repo/: the demo export, an adapter store, asr_streaming."""

    root: Path
    model_dir: Path
    store_dir: Path
    refs: dict  # test name -> "name@v1"
    arrays: dict  # test name -> the adapter's arrays (ln_weight, ln_bias, down, up)
    fingerprint: str  # the exported model's


def random_adapter_arrays(rng, n_layers, d_model, dim):
    return {
        "ln_weight": (1.0 + 0.2 * rng.standard_normal((n_layers, d_model))).astype(np.float32),
        "ln_bias": (0.2 * rng.standard_normal((n_layers, d_model))).astype(np.float32),
        "down": (0.3 * rng.standard_normal((n_layers, dim, d_model))).astype(np.float32),
        "up": (0.3 * rng.standard_normal((n_layers, d_model, dim))).astype(np.float32),
    }


def model_config(root: Path, name: str, **params) -> None:
    """Copy model_repo/asr_streaming into ``root/name``, renamed, with some parameters changed. It
    decodes greedily unless ``DECODER`` is given: the in-process references are greedy."""
    params.setdefault("DECODER", "greedy")
    src = DEMO_REPO / "asr_streaming"
    dst = root / name
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
    cfg = (dst / "config.pbtxt").read_text().replace('name: "asr_streaming"', f'name: "{name}"')
    for key, value in params.items():
        cfg, n = re.subn(rf'(key: "{key}", value: {{ string_value: )"[^"]*"', rf'\1"{value}"', cfg)
        assert n == 1, key
    (dst / "config.pbtxt").write_text(cfg)


@pytest.fixture(scope="session")
def demo_repo(tmp_path_factory) -> ServingRepo:
    """The committed demo export and its five trained adapters (v1), plus three random ones, in a
    repository whose asr_streaming decodes greedily (the in-process reference does too)."""
    from brogue.adapters import publish_adapter, read_adapter
    from brogue.engine.metadata import ModelMeta

    root = tmp_path_factory.mktemp("repo")
    model_dir = root / "exported" / "demo"
    shutil.copytree(DEMO_REPO / "exported" / "demo", model_dir)
    store = root / "adapters"
    meta = ModelMeta.load(model_dir)
    refs, arrays = {}, {}
    for short, name in TRAINED.items():
        shutil.copytree(DEMO_REPO / "adapters" / name, store / name)
        w = read_adapter(store / name / "v1", None)
        arrays[short] = {"ln_weight": w.ln_weight, "ln_bias": w.ln_bias, "down": w.down, "up": w.up}
        refs[short] = f"{name}@v1"
    rng = np.random.default_rng(11)
    for short in ADAPTER_NAMES[len(TRAINED):]:
        arrays[short] = random_adapter_arrays(rng, meta.n_layers, meta.d_model, 8)
        m = publish_adapter(store, arrays[short], name=short, version="v1", kind="test",
                            base_fingerprint=meta.fingerprint)
        refs[short] = f"{m.name}@{m.version}"
    model_config(root, "asr_streaming")
    return ServingRepo(root, model_dir, store, refs, arrays, meta.fingerprint)


@functools.cache
def _reference_runner(model_dir: str):
    from brogue.engine.runner import StreamingRunner

    return StreamingRunner(model_dir, slots=2, decoder="greedy")


def reference_run(repo: ServingRepo, audio: np.ndarray, arrays: dict | None = None):
    """``audio`` (16 kHz) streamed alone through the in-process runner, with ``arrays`` in slot 1 (or
    the base model): the reference every served result is compared with. Returns (runner, tokens)."""
    runner = _reference_runner(str(repo.model_dir))
    if arrays is not None:
        runner.bank.write(1, arrays["ln_weight"], arrays["ln_bias"], arrays["down"], arrays["up"])
    (st,) = runner.transcribe([audio], [0 if arrays is None else 1])
    return runner, st.tokens


def reference_text(repo: ServingRepo, audio: np.ndarray, adapter: str | None = None) -> str:
    """The reference transcript of ``audio`` with the adapter named ``adapter`` (or the base model)."""
    runner, tokens = reference_run(repo, audio, repo.arrays[adapter] if adapter else None)
    return runner.detok.decode(tokens)


@functools.cache
def _demo_clips() -> tuple[np.ndarray, ...]:
    import soundfile as sf

    rows = [json.loads(line) for line in (DEMO_CLIPS / "manifest.json").read_text().splitlines() if line.strip()]
    return tuple(sf.read(DEMO_CLIPS / r["audio_filepath"], dtype="float32")[0] for r in rows)


def demo_speech(rng, seconds: float) -> np.ndarray:
    """``seconds`` of real speech (16 kHz float32): the committed demo clips, one per accent set, in
    a random order, each from a random offset in its first third, with pauses of 0.1-0.4 s between."""
    clips, n = _demo_clips(), int(seconds * 16000)
    parts, total = [], 0
    while total < n:
        clip = clips[int(rng.integers(len(clips)))]
        part = clip[int(rng.integers(0, len(clip) // 3)):]
        gap = np.zeros(int(rng.uniform(0.1, 0.4) * 16000), np.float32)
        parts += [part, gap]
        total += len(part) + len(gap)
    return np.concatenate(parts)[:n]


# -- a real tritonserver and a real gateway (`brogue serve`) on loopback ----------------------------

# Tests leave sequences open on purpose (vanished clients, faults); a stopping Triton need not wait
# 10 s for them to go idle (measured: 20 s to stop with one open sequence, 3 s without).
TEST_EXIT_TIMEOUT = 1

DEMO_KEYS = {"base": "key-base-0000", "scot": "key-scot-1111", "carib": "key-carib-2222"}
ADMIN_TOKEN = "admin-token-9999"


def write_tenants(path: Path, refs: dict, max_streams: int = 4) -> None:
    from brogue.server.tenants import key_hash

    lines = [f'admin_token_sha256 = "{key_hash(ADMIN_TOKEN)}"', ""]
    for tenant, key in DEMO_KEYS.items():
        adapter = refs.get(tenant, "")
        lines += [f"[tenants.{tenant}]", f'api_keys_sha256 = ["{key_hash(key)}"]', f'adapter = "{adapter}"',
                  f"max_streams = {max_streams}", "max_stream_seconds = 600", ""]
    path.write_text("\n".join(lines))


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class RunningGateway(GatewayAddresses):
    triton: object
    process: object
    http_port: int
    grpc_port: int
    admin_port: int
    tenants_file: Path
    log_file: Path

    def log(self) -> str:
        return self.log_file.read_text(errors="replace")


def start_gateway(repo: ServingRepo, triton_url: str, tmp: Path, extra=()) -> RunningGateway:
    """`brogue serve --triton-url ...` as a subprocess; waits until its ports answer."""
    import subprocess
    import sys

    tenants = tmp / "tenants.toml"
    if not tenants.exists():
        write_tenants(tenants, repo.refs)
    http, grpc_port, admin = free_port(), free_port(), free_port()
    log_file = tmp / f"gateway-{http}.log"
    cmd = [sys.executable, "-m", "brogue.cli", "serve", "--model-repository", str(repo.root), "--tenants", str(tenants),
           "--triton-url", triton_url, "--http-port", str(http), "--grpc-port", str(grpc_port),
           "--admin-port", str(admin), *extra]
    proc = subprocess.Popen(cmd, stdout=log_file.open("w"), stderr=subprocess.STDOUT)
    wait_until_healthy(proc, http, log_file, tls="--tls-cert" in extra)
    return RunningGateway(None, proc, http, grpc_port, admin, tenants, log_file)


def stop_gateway(gw: RunningGateway) -> None:
    gw.process.terminate()
    try:
        gw.process.wait(10)
    except Exception:
        gw.process.kill()


@pytest.fixture(scope="session")
def triton_server(demo_repo):
    from brogue.server.tritonserver import TritonProcess

    server = TritonProcess(demo_repo.root, models=("asr_streaming",), exit_timeout=TEST_EXIT_TIMEOUT)
    server.start(timeout=240)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def gateway(demo_repo, triton_server, tmp_path_factory):
    gw = start_gateway(demo_repo, triton_server.grpc_url, tmp_path_factory.mktemp("gateway"))
    gw.triton = triton_server
    yield gw
    stop_gateway(gw)
