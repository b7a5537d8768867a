"""Where the ``tritonserver`` that the ``nvidia-pytriton`` wheel carries lives, and how it must be run.

Facts this module relies on, measured with nvidia-pytriton 0.7.0 on hosts without GPU: the
python backend's stub must sit in ``<backend-directory>/python/``; it needs ``nvidia_pytriton.libs``
and the interpreter's ``libpython3.x.so.1.0`` on ``LD_LIBRARY_PATH``, and finds the venv's packages
only when ``PATH`` starts with the venv's ``bin/``. A stub that cannot start makes a model load hang
instead of fail. The installed package is never modified: each server gets a backends folder of
symlinks (:meth:`BundledServer.make_backend_directory`).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import sys
import sysconfig
from collections.abc import Mapping
from pathlib import Path


class TritonNotFound(RuntimeError):
    """The ``tritonserver`` binary bundled by ``nvidia-pytriton`` is not installed."""


@dataclasses.dataclass(frozen=True)
class BundledServer:
    """Paths of the Triton server that ``nvidia-pytriton`` installs in site-packages.

    Attributes:
        binary: ``pytriton/tritonserver/bin/tritonserver``.
        python_backend: ``pytriton/tritonserver/backends/python`` (``libtriton_python.so`` and
            ``triton_python_backend_utils.py``; the wheel ships no stub there).
        stub: ``pytriton/tritonserver/python_backend_stubs/<X.Y>/triton_python_backend_stub`` for
            the running interpreter's version.
        libs: ``nvidia_pytriton.libs``, the shared libraries of the server and the stub.
    """

    binary: Path
    python_backend: Path
    stub: Path
    libs: Path

    def make_backend_directory(self, dest: Path) -> Path:
        """Create ``dest/python/`` with symlinks to the python backend's three files.

        Returns ``dest``, to pass as ``--backend-directory``.
        """
        python_dir = dest / "python"
        python_dir.mkdir(parents=True, exist_ok=True)
        for source in (
            self.python_backend / "libtriton_python.so",
            self.python_backend / "triton_python_backend_utils.py",
            self.stub,
        ):
            (python_dir / source.name).symlink_to(source)
        return dest

    def environment(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """Return the environment for ``tritonserver``: ``base`` (default ``os.environ``) with

        * ``LD_LIBRARY_PATH`` starting with ``libs`` and the interpreter's ``LIBDIR`` (where
          ``libpython3.x.so.1.0`` lives; otherwise the stub picks the system's copy);
        * ``PATH`` starting with ``sys.prefix/bin``, so the stub's embedded Python finds the
          packages of this interpreter's environment (``PYTHONPATH`` alone does not work);
        * ``OPENBLAS_NUM_THREADS=1`` unless set: the model's numpy front end does small matrix
          products per chunk, and OpenBLAS's worker threads busy-wait after each one (measured: one
          real-time stream cost 0.68 CPU-seconds per audio second with them, 0.04 without, together
          with ONNX Runtime's spinning turned off).
        """
        env = dict(os.environ if base is None else base)
        env.setdefault("OPENBLAS_NUM_THREADS", "1")
        libdir = sysconfig.get_config_var("LIBDIR")
        env["LD_LIBRARY_PATH"] = _prepend(env.get("LD_LIBRARY_PATH"), str(self.libs), libdir)
        env["PATH"] = _prepend(env.get("PATH"), str(Path(sys.prefix) / "bin"))
        return env


def find_bundled_server() -> BundledServer:
    """Locate the server installed by ``nvidia-pytriton`` for the running interpreter.

    Raises:
        TritonNotFound: ``pytriton`` is not importable, or one of the files is missing (for
            example no stub for this Python version).
    """
    hint = "install it with `pip install nvidia-pytriton` (or `pip install 'brogue[serve]'`)"
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise TritonNotFound(f"the tritonserver binary comes with nvidia-pytriton, not installed: {hint}")
    package = Path(next(iter(spec.submodule_search_locations)))
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    root = package / "tritonserver"
    server = BundledServer(
        binary=root / "bin" / "tritonserver",
        python_backend=root / "backends" / "python",
        stub=root / "python_backend_stubs" / version / "triton_python_backend_stub",
        libs=package.parent / "nvidia_pytriton.libs",
    )
    missing = [str(path) for path in dataclasses.astuple(server) if not path.exists()]
    if missing:
        raise TritonNotFound(
            f"incomplete nvidia-pytriton install for Python {version}, missing: "
            f"{', '.join(missing)}; {hint}"
        )
    return server


def _prepend(current: str | None, *entries: str) -> str:
    return os.pathsep.join([*entries, *([current] if current else [])])
