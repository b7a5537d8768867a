"""``brogue demo``: the README's demo command: Triton and the gateway on the demo model and tenants.

It serves ``model_repo/`` as ``brogue serve`` does. While the trained demo model is not committed
(``model_repo/exported/demo``, issue 3), it builds a demo repository in ``~/.cache/brogue/demo``
instead, around a model built from config with *untrained* weights: the whole data path is real
(browser page, WebSocket, Riva gRPC, adapters, Triton), the words are not, and it says so.
"""

from __future__ import annotations

import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MODEL_REPO = REPO / "model_repo"
CACHE = Path.home() / ".cache" / "brogue" / "demo"


def demo_repository(console=print) -> Path:
    """The model repository to serve: model_repo/ when it holds a model, else the untrained cache."""
    if (MODEL_REPO / "exported" / "demo" / "model.json").is_file():
        return MODEL_REPO
    console("NOTE: model_repo/exported/demo holds no trained model yet: serving a model built from config "
            "with UNTRAINED weights. Everything runs for real; the transcripts are noise.")
    if not (CACHE / "exported" / "demo" / "model.json").is_file():
        import torch

        from brogue.export.configs import build_model
        from brogue.export.nemo_export import export_model

        torch.manual_seed(0)
        shutil.rmtree(CACHE / "exported", ignore_errors=True)
        export_model(build_model("ctc", att_context_size=[70, 6]), CACHE / "exported" / "demo", max_adapter_dim=64)
    shutil.rmtree(CACHE / "asr_streaming", ignore_errors=True)
    shutil.copytree(MODEL_REPO / "asr_streaming", CACHE / "asr_streaming", ignore=shutil.ignore_patterns("__pycache__"))
    (CACHE / "adapters").mkdir(exist_ok=True)
    return CACHE


def run_demo(console=print) -> None:
    from brogue.server.app import Listen, serve

    repo = demo_repository(console)
    listen = Listen()
    console(f"open http://{listen.host}:{listen.http_port}/ (demo API key: brogue-demo-base), or:\n"
            f"  brogue mic --api-key brogue-demo-base --file some.wav\n"
            f"  brogue transcribe --api-key brogue-demo-base some.wav\n"
            f"Riva gRPC on {listen.host}:{listen.grpc_port}; Ctrl-C stops. Starting Triton ...")
    serve(repo, tenants=MODEL_REPO / "tenants.toml", triton_urls=[], listen=listen)
