"""NVIDIA's Triton container for GPU hosts: the ``docker run`` equivalent to a local
:class:`~brogue.server.tritonserver.TritonProcess` (docs/deploy-gpu.md)."""

from __future__ import annotations

import os
import shlex
from collections.abc import Sequence
from pathlib import Path

DEFAULT_IMAGE = "nvcr.io/nvidia/tritonserver:24.10-py3"
"""NVIDIA's Triton container matching the bundled server version (2.51)."""

CONTAINER_PACKAGES = ("numpy<2", "safetensors>=0.4", "onnxruntime-gpu>=1.18")
"""What the python-backend models import inside the container, besides ``brogue`` itself.

``brogue`` is installed with ``--no-deps`` so that its CPU ``onnxruntime`` requirement does not
shadow ``onnxruntime-gpu`` (both provide the ``onnxruntime`` module)."""

TORCH_PACKAGE = "torch==2.13.0"
"""What the torch backends (``EXECUTION_PROVIDER`` ``torch-cuda``) add inside the container: on
Linux, PyPI's default torch wheel is the CUDA build."""


def docker_command(
    model_repository: str | os.PathLike[str],
    *,
    source: str | os.PathLike[str] | None = None,
    image: str = DEFAULT_IMAGE,
    gpus: str | None = "all",
    models: Sequence[str] | None = ("asr_streaming",),
    grpc_port: int = 8001,
    http_port: int = 8000,
    metrics_port: int = 8002,
    shm_size: str = "1g",
    install: bool = True,
    torch: bool = False,
) -> list[str]:
    """The ``docker run`` of NVIDIA's Triton container equivalent to :class:`TritonProcess`.

    The Brogue checkout ``source`` (the folder with ``pyproject.toml``; default: the checkout this
    module is imported from) is mounted read-only at ``/workspace``. ``model_repository`` is served
    from its place under ``/workspace`` when it lies inside ``source``, else it is mounted read-only
    at ``/models``.

    With ``install`` (the default), the container first copies ``/workspace`` without ``.git``,
    ``.venv`` and the model repository to ``/tmp/brogue`` (setuptools builds in the source tree,
    which is read-only), runs ``pip install --no-deps /tmp/brogue`` and installs
    :data:`CONTAINER_PACKAGES`; this needs network access at each start. Pass ``install=False``
    with an ``image`` that already holds them (built ``FROM`` :data:`DEFAULT_IMAGE`).

    Args:
        gpus: the value of ``docker run --gpus`` (``"all"``, ``"1"``, ``'"device=0,1"'``), or None
            for no GPU.
        models: names of the models to load, or None for all.
        grpc_port, http_port, metrics_port: host ports published for the container's 8001, 8000
            and 8002.
        shm_size: ``--shm-size``; the python backend exchanges tensors through ``/dev/shm``.
        torch: also install :data:`TORCH_PACKAGE`, for ``EXECUTION_PROVIDER`` ``torch-cuda``.

    Raises:
        ValueError: ``install`` is set and ``source`` has no ``pyproject.toml``.
    """
    source_dir = Path(source).resolve() if source is not None else Path(__file__).resolve().parents[1]
    repository = Path(model_repository).resolve()
    if install and not (source_dir / "pyproject.toml").is_file():
        raise ValueError(f"{source_dir} is not a brogue checkout (no pyproject.toml); pass source=")
    mounts = ["-v", f"{source_dir}:/workspace:ro"]
    if repository.is_relative_to(source_dir):
        relative = repository.relative_to(source_dir)
        container_repository = f"/workspace/{relative.as_posix()}"
        excludes = [".git", ".venv", f"./{relative.as_posix()}"]
    else:
        mounts += ["-v", f"{repository}:/models:ro"]
        container_repository = "/models"
        excludes = [".git", ".venv"]
    loads = ["*"] if models is None else models
    serve = [
        "tritonserver",
        f"--model-repository={container_repository}",
        "--model-control-mode=explicit",
        *(f"--load-model={name}" for name in loads),
    ]
    command = ["docker", "run", "--rm", "--init"]
    if gpus is not None:
        command += ["--gpus", gpus]
    command += [
        f"--shm-size={shm_size}",
        "-p", f"{http_port}:8000",
        "-p", f"{grpc_port}:8001",
        "-p", f"{metrics_port}:8002",
        *mounts,
    ]
    command += ["-e", "OPENBLAS_NUM_THREADS=1"]  # see BundledServer.environment
    if not install:
        return [*command, image, *serve]
    setup = " && ".join(
        [
            "mkdir -p /tmp/brogue",
            "tar -C /workspace " + " ".join(f"--exclude={shlex.quote(e)}" for e in excludes)
            + " -cf - . | tar -C /tmp/brogue -xf -",
            "pip install --no-cache-dir --no-deps /tmp/brogue",
            "pip install --no-cache-dir " + shlex.join([*CONTAINER_PACKAGES, *([TORCH_PACKAGE] if torch else [])]),
            "exec " + shlex.join(serve),
        ]
    )
    # PIP_BREAK_SYSTEM_PACKAGES: the container's Python may be marked externally managed (PEP 668).
    return [*command, "-e", "PIP_BREAK_SYSTEM_PACKAGES=1", image, "bash", "-c", "set -eo pipefail; " + setup]
