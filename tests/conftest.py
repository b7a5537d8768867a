"""Shared fixtures: a tiny exported model with adapters in a store, and a real tritonserver on it."""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from brogue.server.gateway_process import GatewayAddresses, wait_until_healthy

REPO = Path(__file__).resolve().parent.parent
ADAPTER_NAMES = ["scot", "carib", "med", "indian", "ger", "span", "legal", "fin"]


@dataclass
class TinyRepo:
    """A Triton model repository like model_repo/, around a tiny exported model."""

    root: Path
    model_dir: Path
    store_dir: Path
    refs: dict  # adapter name -> "name@v1"
    arrays: dict  # adapter name -> store arrays (v1)
    model: object  # the NeMo model (adapters disabled)


def _random_arrays(rng, n_layers, d_model, dim):
    return {
        "ln_weight": (1.0 + 0.2 * rng.standard_normal((n_layers, d_model))).astype(np.float32),
        "ln_bias": (0.2 * rng.standard_normal((n_layers, d_model))).astype(np.float32),
        "down": (0.3 * rng.standard_normal((n_layers, dim, d_model))).astype(np.float32),
        "up": (0.3 * rng.standard_normal((n_layers, d_model, dim))).astype(np.float32),
    }


def model_config(root: Path, name: str, **params) -> None:
    """Copy model_repo/asr_streaming into ``root/name``, renamed, with some parameters changed."""
    src = REPO / "model_repo" / "asr_streaming"
    dst = root / name
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
    cfg = (dst / "config.pbtxt").read_text().replace('name: "asr_streaming"', f'name: "{name}"')
    for key, value in params.items():
        cfg, n = re.subn(rf'(key: "{key}", value: {{ string_value: )"[^"]*"', rf'\1"{value}"', cfg)
        assert n == 1, key
    (dst / "config.pbtxt").write_text(cfg)


@pytest.fixture(scope="session")
def tiny_repo(tmp_path_factory) -> TinyRepo:
    """A tiny CTC model (random weights, made to emit tokens), exported, with 8 adapters v1."""
    import torch
    from brogue.export.configs import build_model
    from brogue.export.nemo_export import export_model
    from brogue.export.nemo_model import fingerprint
    from nemo_reference import make_talkative

    from brogue.adapters import publish_adapter

    root = tmp_path_factory.mktemp("repo")
    torch.manual_seed(0)
    model = build_model("ctc", d_model=64, n_layers=2, n_heads=2, att_context_size=[16, 7]).eval()
    make_talkative(model)
    model_dir = root / "exported" / "demo"
    export_model(model, model_dir, max_adapter_dim=16)
    fp = fingerprint(model)
    rng = np.random.default_rng(11)
    refs, arrays = {}, {}
    for name in ADAPTER_NAMES:
        arrays[name] = _random_arrays(rng, 2, 64, 8)
        m = publish_adapter(root / "adapters", arrays[name], name=name, version="v1", kind="test",
                            base_fingerprint=fp)
        refs[name] = f"{m.name}@{m.version}"
    model_config(root, "asr_streaming")
    return TinyRepo(root, model_dir, root / "adapters", refs, arrays, model)


def reference_run(tiny_repo: TinyRepo, audio: np.ndarray, arrays: dict | None = None):
    """``audio`` (16 kHz) streamed alone through the in-process runner, with ``arrays`` in slot 1 (or
    the base model): the reference every served result is compared with. Returns (runner, tokens)."""
    from brogue.engine.runner import StreamingRunner

    runner = StreamingRunner(tiny_repo.model_dir, slots=2)
    if arrays is not None:
        runner.bank.write(1, arrays["ln_weight"], arrays["ln_bias"], arrays["down"], arrays["up"])
    (st,) = runner.transcribe([audio], [0 if arrays is None else 1])
    return runner, st.tokens


def reference_text(tiny_repo: TinyRepo, audio: np.ndarray, adapter: str | None = None) -> str:
    """The reference transcript of ``audio`` with the adapter named ``adapter`` (or the base model)."""
    runner, tokens = reference_run(tiny_repo, audio, tiny_repo.arrays[adapter] if adapter else None)
    return runner.detok.decode(tokens)


def speechlike(rng, seconds: float) -> np.ndarray:
    """Random noise bursts (the tiny models are untrained: any signal will do, but vary it)."""
    n = int(seconds * 16000)
    env = np.repeat(rng.uniform(0.0, 0.3, size=n // 1600 + 1), 1600)[:n]
    return (rng.standard_normal(n) * env).astype(np.float32)


# -- a real tritonserver and a real gateway (`brogue serve`) on loopback ----------------------------

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


def start_gateway(repo: TinyRepo, triton_url: str, tmp: Path, extra=()) -> RunningGateway:
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
def triton_server(tiny_repo):
    from brogue.server.tritonserver import TritonProcess

    server = TritonProcess(tiny_repo.root, models=("asr_streaming",))
    server.start(timeout=240)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def gateway(tiny_repo, triton_server, tmp_path_factory):
    gw = start_gateway(tiny_repo, triton_server.grpc_url, tmp_path_factory.mktemp("gateway"))
    gw.triton = triton_server
    yield gw
    stop_gateway(gw)
