"""brogue.server.tritonserver against the real tritonserver bundled by nvidia-pytriton.

These tests fail (they do not skip) when the bundled server is missing: serving depends on it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from brogue.server import triton_bundle
from brogue.server.triton_bundle import TritonNotFound, find_bundled_server
from brogue.server.triton_container import DEFAULT_IMAGE, docker_command
from brogue.server.tritonserver import TritonProcess, TritonServerError

pytestmark = pytest.mark.timeout(120)

CONFIG = """
name: "add_one"
backend: "python"
max_batch_size: 0
input [ { name: "X", data_type: TYPE_FP32, dims: [ -1 ] } ]
output [ { name: "Y", data_type: TYPE_FP32, dims: [ -1 ] } ]
instance_group [ { kind: KIND_CPU, count: 1 } ]
"""

ADD_ONE = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "X").as_numpy()
            y = pb_utils.Tensor("Y", (x + 1).astype(np.float32))
            responses.append(pb_utils.InferenceResponse(output_tensors=[y]))
        return responses
"""

BROKEN = """
class TritonPythonModel:
    def initialize(self, args):
        raise RuntimeError("add_one: weights file is corrupt (test sentinel)")

    def execute(self, requests):
        return []
"""


def make_repository(root: Path, model_py: str) -> Path:
    """A model repository with the single python-backend model ``add_one``."""
    (root / "add_one" / "1").mkdir(parents=True)
    (root / "add_one" / "config.pbtxt").write_text(CONFIG)
    (root / "add_one" / "1" / "model.py").write_text(model_py)
    return root


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    return make_repository(tmp_path / "repo", ADD_ONE)


def add_one(server: TritonProcess, values: list[float]) -> np.ndarray:
    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        x = grpcclient.InferInput("X", [len(values)], "FP32")
        x.set_data_from_numpy(np.asarray(values, dtype=np.float32))
        return client.infer("add_one", [x]).as_numpy("Y")
    finally:
        client.close()


def processes_mentioning(text: str) -> list[int]:
    """Pids whose command line contains ``text`` (the server's and its stubs' carry the prefix)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and entry.name != str(os.getpid()):
            try:
                if text.encode() in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


def shm_files(prefix: str) -> list[Path]:
    return [path for path in Path("/dev/shm").iterdir() if path.name.startswith(prefix)]


def assert_cleaned_up(server: TritonProcess, pid: int) -> None:
    assert server.pid is None
    assert not Path(f"/proc/{pid}").exists()
    assert processes_mentioning(server.shm_prefix) == []
    assert shm_files(server.shm_prefix) == []


def test_bundled_server_is_installed() -> None:
    bundle = find_bundled_server()
    assert os.access(bundle.binary, os.X_OK)
    assert os.access(bundle.stub, os.X_OK)


def test_missing_pytriton_names_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(triton_bundle.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(TritonNotFound, match="pip install nvidia-pytriton"):
        find_bundled_server()


def test_serves_a_python_model_and_cleans_up(repository: Path) -> None:
    with TritonProcess(repository, models=["add_one"]) as server:
        pid = server.pid
        assert pid is not None
        assert shm_files(server.shm_prefix), "the python stub should use the instance's prefix"
        np.testing.assert_array_equal(add_one(server, [1.0, 2.5, -3.0]), [2.0, 3.5, -2.0])
        assert server.http_url == f"http://127.0.0.1:{server.http_port}"
        assert server.metrics_url.endswith(f":{server.metrics_port}/metrics")
    assert_cleaned_up(server, pid)
    server.stop()  # idempotent


def test_two_servers_side_by_side(repository: Path) -> None:
    with (
        TritonProcess(repository, models=None) as first,
        TritonProcess(repository, models=["add_one"]) as second,
    ):
        pids = [first.pid, second.pid]
        ports = {first.grpc_port, first.http_port, first.metrics_port,
                 second.grpc_port, second.http_port, second.metrics_port}
        assert len(ports) == 6
        assert first.shm_prefix != second.shm_prefix
        assert not first.shm_prefix.startswith(second.shm_prefix)
        assert not second.shm_prefix.startswith(first.shm_prefix)
        np.testing.assert_array_equal(add_one(first, [0.0]), [1.0])
        np.testing.assert_array_equal(add_one(second, [41.0]), [42.0])
    assert_cleaned_up(first, pids[0])
    assert_cleaned_up(second, pids[1])


def test_failing_initialize_is_reported_with_the_model_error(tmp_path: Path) -> None:
    repository = make_repository(tmp_path / "repo", BROKEN)
    log_file = tmp_path / "server.log"
    server = TritonProcess(repository, models=["add_one"], log_file=log_file)
    with pytest.raises(TritonServerError, match="exited with code") as failure:
        server.start(timeout=60)
    assert "weights file is corrupt (test sentinel)" in str(failure.value)
    assert server.pid is None
    assert processes_mentioning(server.shm_prefix) == []
    assert shm_files(server.shm_prefix) == []
    assert "weights file is corrupt" in log_file.read_text()  # a given log file is kept


def test_docker_command_mounts_the_checkout(tmp_path: Path) -> None:
    source = tmp_path / "checkout"
    repository = source / "model_repo"
    repository.mkdir(parents=True)
    (source / "pyproject.toml").write_text("[project]\nname = 'brogue'\n")

    command = docker_command(repository, source=source, grpc_port=9001)
    assert command[:2] == ["docker", "run"]
    assert f"{source}:/workspace:ro" in command
    assert DEFAULT_IMAGE in command
    assert "9001:8001" in command
    assert ["--gpus", "all"] == command[command.index("--gpus"):][:2]
    script = command[-1]
    assert "pip install --no-cache-dir --no-deps /tmp/brogue" in script
    assert "onnxruntime-gpu" in script
    assert "--model-repository=/workspace/model_repo" in script
    assert "--load-model=asr_streaming" in script
    assert "torch" not in script  # the ONNX Runtime providers need no torch
    assert "torch==" in docker_command(repository, source=source, torch=True)[-1]

    elsewhere = make_repository(tmp_path / "models", ADD_ONE)
    command = docker_command(elsewhere, source=source, image="brogue:gpu", install=False, models=None)
    assert f"{elsewhere}:/models:ro" in command
    assert command[command.index("brogue:gpu") + 1:] == [
        "tritonserver", "--model-repository=/models", "--model-control-mode=explicit", "--load-model=*",
    ]


def _serve_forever_child(repository: Path) -> subprocess.Popen:
    """``serve_forever`` in a child process, returned once it says it is ready."""
    code = (
        "from brogue.server.tritonserver import serve_forever; "
        f"serve_forever({str(repository)!r}, models=['add_one'])"
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    printed = []
    while not printed or printed[-1] != "Ctrl-C to stop.\n":
        line = child.stdout.readline()
        if not line:
            child.kill()
            raise AssertionError(f"serve_forever ended early: {printed} {child.stderr.read()}")
        printed.append(line)
    assert printed[0].startswith("Triton ready: gRPC 127.0.0.1:")
    assert any("tritonserver:24.10-py3" in line for line in printed)
    return child


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
def test_serve_forever_stops_cleanly_on_sigterm_and_ctrl_c(repository: Path, sig: int) -> None:
    server_flag = f"--model-repository={repository}"
    child = _serve_forever_child(repository)
    try:
        assert processes_mentioning(server_flag), "tritonserver should be running"
        child.send_signal(sig)
        assert child.wait(timeout=60) == 0, child.stderr.read()
        assert "stopping tritonserver" in child.stdout.read()
    finally:
        child.kill()
        child.wait()
    assert processes_mentioning(server_flag) == []


def test_serve_forever_fails_when_tritonserver_dies(repository: Path) -> None:
    """A server that exits on its own ends serve_forever with an error naming its exit code."""
    server_flag = f"--model-repository={repository}"
    child = _serve_forever_child(repository)
    try:
        for pid in processes_mentioning(server_flag):
            if b"tritonserver" in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]:
                os.kill(pid, signal.SIGKILL)
        assert child.wait(timeout=60) != 0
        assert "tritonserver exited with code -9" in child.stderr.read()
    finally:
        child.kill()
        child.wait()
    assert processes_mentioning(server_flag) == []
