"""Run NVIDIA Triton Inference Server for a Brogue model repository, as a child process.

Two ways to serve the same ``model_repo``:

* **CPU hosts, no Docker:** :class:`TritonProcess` runs the ``tritonserver`` binary (2.51) that the
  PyPI wheel ``nvidia-pytriton`` carries, with its python backend
  (:mod:`brogue.server.triton_bundle` finds it and says how it must be run).
* **GPU hosts:** :func:`~brogue.server.triton_container.docker_command` returns the equivalent
  ``docker run`` of NVIDIA's Triton container (24.10 = server 2.51), see ``docs/deploy-gpu.md``.
"""

from __future__ import annotations

import glob
import os
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from .triton_bundle import find_bundled_server
from .triton_container import docker_command

_LOG_TAIL_LINES = 40


class TritonServerError(RuntimeError):
    """``tritonserver`` exited, or it or its models did not become ready in time."""



class TritonProcess:
    """A ``tritonserver`` child process serving ``model_repository`` on loopback ports.

    Use as a context manager (``with TritonProcess(repo) as server: ...``) or call :meth:`start`
    and :meth:`stop`. ``start()`` returns ``self``, so ``with TritonProcess(repo).start(timeout=120)``
    sets a custom timeout.

    The server runs in its own process group with ``--model-control-mode=explicit``, loading only
    ``models`` (all models of the repository when ``models`` is None). Each instance has its own
    run folder (backends folder and, unless ``log_file`` is given, ``tritonserver.log``) and a
    unique python-backend shared-memory prefix, so several instances run side by side.

    Args:
        model_repository: the Triton model repository folder.
        models: names of the models to load, or None for all.
        grpc_port, http_port, metrics_port: ports; a free one is chosen for each that is None.
        host: the IPv4 address the three endpoints listen on.
        log_verbose: ``--log-verbose`` level.
        extra_args: further ``tritonserver`` arguments, appended last.
        log_file: where the server's stdout and stderr go; default: the run folder, removed by
            :meth:`stop`.
        parameters: ``{model: {KEY: value}}``, config parameters to serve the models with instead
            of their ``config.pbtxt`` values (through an overlay repository in the run folder, see
            :mod:`brogue.server.triton_repository`; the repository itself is not changed).
    """

    def __init__(
        self,
        model_repository: str | os.PathLike[str],
        *,
        models: Sequence[str] | None = ("asr_streaming",),
        grpc_port: int | None = None,
        http_port: int | None = None,
        metrics_port: int | None = None,
        host: str = "127.0.0.1",
        log_verbose: int = 0,
        extra_args: Sequence[str] = (),
        log_file: str | os.PathLike[str] | None = None,
        parameters: Mapping[str, Mapping[str, str]] | None = None,
        exit_timeout: int = 10,
    ) -> None:
        # exit_timeout: how long a stopping Triton waits for its models to go idle. A sequence left
        # open (a client gone without END) holds its model until then; `brogue serve` ends its
        # streams' sequences before it stops Triton, so the wait is for other clients' sequences.
        self.model_repository = Path(model_repository).resolve()
        self.exit_timeout = int(exit_timeout)
        self.parameters = {m: dict(p) for m, p in (parameters or {}).items()}
        self.models = None if models is None else tuple(models)
        self.host = host
        self.grpc_port, self.http_port, self.metrics_port = _free_ports(
            host, (grpc_port, http_port, metrics_port)
        )
        self.log_verbose = log_verbose
        self.extra_args = tuple(extra_args)
        self.log_file = None if log_file is None else Path(log_file)
        self.shm_prefix = f"brogue_{os.getpid()}_{os.urandom(4).hex()}_"
        self._run_dir: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def grpc_url(self) -> str:
        """``host:port`` of the gRPC endpoint, as ``tritonclient.grpc`` takes it."""
        return f"{self._client_host}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        """``http://host:port`` of the HTTP/REST endpoint (``tritonclient.http`` takes it without
        the scheme)."""
        return f"http://{self._client_host}:{self.http_port}"

    @property
    def metrics_url(self) -> str:
        """``http://host:port/metrics``, the Prometheus metrics."""
        return f"http://{self._client_host}:{self.metrics_port}/metrics"

    @property
    def pid(self) -> int | None:
        """Process id of the server, or None before :meth:`start` and after :meth:`stop`."""
        return None if self._process is None else self._process.pid

    @property
    def log_path(self) -> Path:
        """The server's stdout and stderr: ``log_file``, else ``tritonserver.log`` in the run folder.

        Raises RuntimeError when ``log_file`` is None and the server is not started."""
        if self.log_file is not None:
            return self.log_file
        if self._run_dir is None:
            raise RuntimeError("no run folder: the server is not started")
        return self._run_dir / "tritonserver.log"

    @property
    def _client_host(self) -> str:
        return "127.0.0.1" if self.host == "0.0.0.0" else self.host

    def _command(self, binary: Path, backend_directory: Path, repository: Path) -> list[str]:
        """The ``tritonserver`` command line, with the flags that work on a host without GPU."""
        loads = ["*"] if self.models is None else self.models
        return [
            str(binary),
            f"--model-repository={repository}",
            f"--backend-directory={backend_directory}",
            "--model-control-mode=explicit",
            *(f"--load-model={name}" for name in loads),
            "--backend-config=python,shm-default-byte-size=4194304",
            "--backend-config=python,shm-growth-byte-size=4194304",
            f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}",
            f"--grpc-address={self.host}",
            f"--grpc-port={self.grpc_port}",
            f"--http-address={self.host}",
            f"--http-port={self.http_port}",
            f"--metrics-address={self.host}",
            f"--metrics-port={self.metrics_port}",
            "--allow-gpu-metrics=false",
            "--pinned-memory-pool-byte-size=0",
            "--cuda-memory-pool-byte-size=0:0",
            f"--exit-timeout-secs={self.exit_timeout}",
            f"--log-verbose={self.log_verbose}",
            *self.extra_args,
        ]

    def start(self, timeout: float = 60.0) -> TritonProcess:
        """Launch the server and wait until it and the requested models are ready.

        Raises:
            TritonNotFound: no bundled server (see :func:`find_bundled_server`).
            TritonServerError: the server exited, or was not ready within ``timeout`` seconds
                (then it is stopped). The message carries the tail of the server log.
        """
        if self._process is not None:
            raise RuntimeError("this TritonProcess is already started")
        bundle = find_bundled_server()
        self._run_dir = Path(tempfile.mkdtemp(prefix="brogue-triton-"))
        try:
            backends = bundle.make_backend_directory(self._run_dir / "backends")
            repository = self.model_repository
            if self.parameters:
                from .triton_repository import overlay_repository

                repository = overlay_repository(repository, self._run_dir / "models", self.parameters)
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.log_path, "wb") as log:
                self._process = subprocess.Popen(
                    self._command(bundle.binary, backends, repository),
                    env=bundle.environment(),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # Ctrl-C reaches us, not the server; stop() handles it
                )
            self._wait_ready(self._process, timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def wait(self) -> int:
        """Block until the server exits; return its exit code."""
        if self._process is None:
            raise RuntimeError("this TritonProcess is not started")
        return self._process.wait()

    def poll(self) -> int | None:
        """The server's exit code if it has exited, else None (never blocks)."""
        if self._process is None:
            raise RuntimeError("this TritonProcess is not started")
        return self._process.poll()

    def stop(self, grace: float = 15.0) -> None:
        """Stop the server and clean up after it; safe to call more than once.

        Sends SIGINT (Triton's graceful shutdown, bounded by ``--exit-timeout-secs``), then
        SIGTERM after ``grace`` seconds, then SIGKILL to its whole process group 5 s later. Then
        kills any python stub left in the group, removes the instance's ``/dev/shm/<prefix>*``
        files and its run folder.
        """
        process, self._process = self._process, None
        if process is not None:
            for sig, wait in ((signal.SIGINT, grace), (signal.SIGTERM, 5.0)):
                if process.poll() is None:
                    process.send_signal(sig)
                    try:
                        process.wait(wait)
                    except subprocess.TimeoutExpired:
                        pass
            _kill_group(process.pid)
            process.wait()
        for path in glob.glob(f"/dev/shm/{glob.escape(self.shm_prefix)}*"):
            Path(path).unlink(missing_ok=True)
        if self._run_dir is not None:
            shutil.rmtree(self._run_dir, ignore_errors=True)
            self._run_dir = None

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        """The last ``lines`` lines of the server log ("" when there is none yet)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except (OSError, RuntimeError):
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def log_errors(self) -> list[str]:
        """The server log's error lines (``E...`` records and ``error: ...``), the noise of a host
        without GPU (CUDA driver, GPU metrics) left out: why a start failed, however long the log."""
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except (OSError, RuntimeError):
            return []
        return [l.split("] ", 1)[-1].strip('"') for l in lines
                if (l.startswith("E") and l[1:5].isdigit() or l.startswith("error:")) and "Cuda" not in l
                and "GPU" not in l]

    def __enter__(self) -> TritonProcess:
        return self if self._process is not None else self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _wait_ready(self, process: subprocess.Popen[bytes], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        # Short reconnect backoff: the port opens only after the models are loaded.
        client = grpcclient.InferenceServerClient(
            self.grpc_url,
            channel_args=[
                ("grpc.initial_reconnect_backoff_ms", 100),
                ("grpc.min_reconnect_backoff_ms", 100),
                ("grpc.max_reconnect_backoff_ms", 500),
            ],
        )
        try:
            while True:
                code = process.poll()
                if code is not None:
                    raise TritonServerError(
                        f"tritonserver exited with code {code} before it was ready: "
                        f"{'; '.join(self.log_errors()) or 'no error in its log'}. Log tail:\n{self.log_tail()}"
                    )
                if self._ready(client):
                    return
                if time.monotonic() > deadline:
                    waiting_for = "all models" if self.models is None else ", ".join(self.models)
                    raise TritonServerError(
                        f"tritonserver or its models ({waiting_for}) not ready after {timeout:g} s: "
                        "a slow model needs a longer timeout, and a python-backend model whose stub "
                        "cannot start (missing library, wrong Python) makes the load hang instead of "
                        "fail. Log tail:\n"
                        f"{self.log_tail()}"
                    )
                time.sleep(0.1)
        finally:
            client.close()

    def _ready(self, client: grpcclient.InferenceServerClient) -> bool:
        try:
            return client.is_server_ready(client_timeout=1.0) and all(
                client.is_model_ready(name, client_timeout=1.0) for name in self.models or ()
            )
        except InferenceServerException:
            return False


def serve_forever(model_repository: str | os.PathLike[str], *, timeout: float = 60.0, **kwargs: Any) -> None:
    """Run :class:`TritonProcess` until Ctrl-C or SIGTERM, then stop it cleanly.

    ``kwargs`` go to :class:`TritonProcess`, ``timeout`` to :meth:`TritonProcess.start`. Prints
    the endpoints, the log file and, when run from a checkout, the equivalent
    :func:`docker_command` for GPU hosts. Call it from the main thread (it handles SIGTERM).

    Raises:
        TritonServerError: the server did not start, or exited on its own (with its log tail).
    """
    server = TritonProcess(model_repository, **kwargs)
    stop = threading.Event()
    # While starting, SIGTERM unwinds like Ctrl-C. Once up, both only set `stop`: an exception
    # raised inside Popen.wait() can leave its internal lock held, and stop()'s own wait then hangs.
    previous = {signal.SIGTERM: signal.signal(signal.SIGTERM, _raise_keyboard_interrupt),
                signal.SIGINT: signal.getsignal(signal.SIGINT)}
    try:
        server.start(timeout=timeout)
        for sig in previous:
            signal.signal(sig, lambda signum, frame: stop.set())
        print(f"Triton ready: gRPC {server.grpc_url}  HTTP {server.http_url}  metrics {server.metrics_url}")
        print(f"server log: {server.log_path}")
        try:
            docker = shlex.join(docker_command(model_repository, models=server.models))
            print(f"on a GPU host, the same repository in NVIDIA's container:\n  {docker}")
        except ValueError:
            pass  # brogue is installed, not run from a checkout: no source to mount
        print("Ctrl-C to stop.", flush=True)
        while not stop.wait(0.5):
            code = server.poll()
            if code is not None:
                raise TritonServerError(f"tritonserver exited with code {code}; log tail:\n{server.log_tail()}")
        print("stopping tritonserver...", flush=True)
    except KeyboardInterrupt:
        print("stopping tritonserver...", flush=True)
    finally:
        server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _raise_keyboard_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt



def _free_ports(host: str, wanted: Sequence[int | None]) -> tuple[int, ...]:
    """``wanted`` with each None replaced by a distinct free TCP port of ``host``."""
    sockets = []
    try:
        ports = []
        for port in wanted:
            if port is None:
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sockets.append(sock)
                sock.bind((host, 0))
                port = sock.getsockname()[1]
            ports.append(port)
        return tuple(ports)
    finally:
        for sock in sockets:
            sock.close()


def _kill_group(pgid: int) -> None:
    """SIGKILL what is left of the server's process group (its python stubs)."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass
