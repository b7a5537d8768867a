"""`brogue serve --model-dir DIR` serves DIR in Triton too, and a gateway never decodes another model's tokens.

A tiny freshly exported model (``exported/demo`` of its own repository) and the committed demo model
have different vocabularies: a gateway that read one and a Triton that served the other would print
garbage.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from brogue.engine.metadata import ModelMeta
from brogue.engine.runner import StreamingRunner
from brogue.server.gateway_process import wait_until_healthy
from conftest import DEMO_KEYS, REPO, free_port, model_config, write_tenants
from test_websocket import finals_text, stream_ws

DEMO = REPO / "model_repo" / "exported" / "demo"


@pytest.fixture(scope="module")
def tiny_repo(tmp_path_factory):
    """A model repository whose own model (``exported/demo``) is a tiny random CTC model, not the demo."""
    import torch

    from brogue.export.configs import build_model
    from brogue.export.nemo_export import export_model

    root = tmp_path_factory.mktemp("tiny")
    torch.manual_seed(0)
    model = build_model("ctc", d_model=64, n_layers=2, n_heads=2, att_context_size=[16, 7]).eval()
    export_model(model, root / "exported" / "demo", max_adapter_dim=16)
    model_config(root, "asr_streaming", DECODER="auto")  # the served model's LM, if it has one
    return root


def _serve(args, tmp_path, tenants):
    http = free_port()
    log = tmp_path / f"serve-{http}.log"
    cmd = [sys.executable, "-m", "brogue.cli", "serve", "--tenants", str(tenants), "--http-port", str(http),
           "--grpc-port", str(free_port()), "--admin-port", str(free_port()), *args]
    return subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT), http, log


def test_bundled_triton_serves_the_model_dir(tiny_repo, tmp_path):
    tenants = tmp_path / "tenants.toml"
    write_tenants(tenants, {})
    proc, http, log = _serve(["--model-repository", str(tiny_repo), "--model-dir", str(DEMO),
                              "--latencies", "72_5"], tmp_path, tenants)
    try:
        wait_until_healthy(proc, http, log, timeout=240)
        audio, rate = sf.read(REPO / "tests" / "data" / "demo" / "base.flac", dtype="float32")
        pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()
        msgs = asyncio.run(stream_ws(f"ws://127.0.0.1:{http}/v1/stream", DEMO_KEYS["base"], pcm))
        assert msgs[0]["type"] == "ready", msgs[0]
        runner = StreamingRunner(DEMO)  # the demo model in process, with its LM, as Triton decodes it
        (st,) = runner.transcribe([audio])
        want = runner.detok.decode(st.tokens)
        assert len(want) > 20
        assert finals_text(msgs) == want.replace(" ", "")
        bad = asyncio.run(stream_ws(f"ws://127.0.0.1:{http}/v1/stream", DEMO_KEYS["base"], pcm[:3200],
                                    config={"type": "config", "sample_rate": 16000, "encoding": "pcm16",
                                            "latency": "16_7"}))
        assert bad[0]["type"] == "error" and "'16_7' is not in this model" in bad[0]["message"]
    finally:
        proc.terminate()
        proc.wait(30)


def test_gateway_refuses_a_triton_serving_another_model(tiny_repo, triton_server, tmp_path):
    tenants = tmp_path / "tenants.toml"
    write_tenants(tenants, {})
    tiny = tiny_repo / "exported" / "demo"  # the gateway's model; triton_server serves the demo
    proc, _, log = _serve(["--model-repository", str(tiny_repo), "--model-dir", str(tiny), "--triton-url",
                           triton_server.grpc_url], tmp_path, tenants)
    assert proc.wait(120) == 2
    out = log.read_text()
    theirs, ours = ModelMeta.load(DEMO).fingerprint, ModelMeta.load(tiny).fingerprint
    assert theirs != ours
    flat = "".join(out.split())  # the console wraps long lines
    assert f"servesthemodelwithfingerprint{theirs},notthegateway'smodel" in flat, out[-2000:]
    assert f"({ours})" in flat
