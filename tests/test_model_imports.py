"""The Triton model's code imports only what NVIDIA's Triton container gives its python backend.

In the container, ``brogue`` is installed with ``--no-deps`` beside numpy, safetensors and
onnxruntime-gpu (``server/triton_container.py``'s ``CONTAINER_PACKAGES``), and torch for the torch
backends. tritonclient, grpc and the gateway's packages are not there: model.py must not need them.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

from conftest import REPO

ALLOWED = {"numpy", "safetensors", "onnxruntime", "brogue", "triton_python_backend_utils", "torch"}

_PROBE = textwrap.dedent("""
    import importlib.abc, sys, types
    allowed = set(sys.argv[1].split(","))
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            top = name.split(".")[0]
            if top in sys.stdlib_module_names or top in allowed or top.startswith("_"):
                return None
            raise ImportError(f"the Triton model imported {name!r}, which the Triton container lacks")
    sys.meta_path.insert(0, Block())
    sys.modules["triton_python_backend_utils"] = types.ModuleType("triton_python_backend_utils")
    import runpy
    runpy.run_path(sys.argv[2])  # model.py's top level: its imports
    import brogue.engine.encoder, brogue.engine.ort_backend, brogue.engine.torch_backend, brogue.engine.memory
    print("ok")
""")


def test_the_triton_model_imports_no_tritonclient_nor_gateway_packages():
    allowed = ",".join(sorted(ALLOWED - {"torch"}))  # the CPU engine needs no torch either
    out = subprocess.run([sys.executable, "-c", _PROBE, allowed, str(REPO / "model_repo/asr_streaming/1/model.py")],
                         capture_output=True, text=True, cwd="/")
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
