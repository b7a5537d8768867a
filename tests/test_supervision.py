"""`brogue serve` survives its own Triton: supervision, health that tells the truth, several instances.

Real processes throughout: `brogue serve` with its bundled tritonserver (killed with SIGKILL, as an
OOM kill would), or a gateway in front of two tritonservers, and WebSocket clients on loopback.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import numpy as np
import psutil
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from brogue.server.gateway_process import wait_until_healthy
from brogue.server.tritonserver import TritonProcess
from conftest import DEMO_KEYS, free_port, reference_text, demo_speech, write_tenants
from test_websocket import finals_text, pcm16, stream_ws


def _status(port: int, path: str) -> int:
    try:
        return urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2).status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return -1


def _metric(port: int, name: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    m = re.search(rf"^{name} ([0-9.e+]+)$", text, re.M)
    return float(m.group(1)) if m else float("nan")


def _until(predicate, timeout: float, what: str, step: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"not within {timeout:g} s: {what}")


async def _refusal(port: int) -> tuple[int | None, dict]:
    """Open a stream while nothing can serve it: the close code and the message before it."""
    async with connect(f"ws://127.0.0.1:{port}/v1/stream",
                       additional_headers={"Authorization": f"Bearer {DEMO_KEYS['base']}"}) as ws:
        await ws.send(json.dumps({"type": "config", "sample_rate": 16000, "encoding": "pcm16"}))
        msg = json.loads(await ws.recv())
        try:
            await ws.recv()
        except ConnectionClosed:
            pass
        return ws.close_code, msg


def _children(pid: int, keep) -> list[psutil.Process]:
    """Descendants of ``pid`` for which ``keep(process)`` holds (processes that exit meanwhile skipped)."""
    out = []
    for p in psutil.Process(pid).children(recursive=True):
        try:
            if keep(p):
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out


def _running(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _tritonservers(pid: int) -> list[psutil.Process]:
    """The tritonservers that ``brogue serve`` (``pid``) runs: its own children. (A grandchild can be
    named tritonserver too: the python backend forks tritonserver to exec each model's stub, and
    under load the fork lives long enough to be seen.)"""
    return _children(pid, lambda p: p.name() == "tritonserver" and p.ppid() == pid
                     and p.status() != psutil.STATUS_ZOMBIE)


def _zombies(pid: int) -> list[psutil.Process]:
    return _children(pid, lambda p: p.status() == psutil.STATUS_ZOMBIE)


@pytest.fixture()
def served(demo_repo, tmp_path):
    """`brogue serve` with its own tritonserver on the demo repository."""
    tenants = tmp_path / "tenants.toml"
    write_tenants(tenants, demo_repo.refs)
    http = free_port()
    log = tmp_path / "serve.log"
    cmd = [sys.executable, "-m", "brogue.cli", "serve", "--model-repository", str(demo_repo.root), "--tenants",
           str(tenants), "--http-port", str(http), "--grpc-port", str(free_port()), "--admin-port", str(free_port())]
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT)
    tritons = []
    try:
        wait_until_healthy(proc, http, log, timeout=240)
        yield proc, http, log
        tritons = _tritonservers(proc.pid)
    finally:
        proc.terminate()
        proc.wait(60)
    assert tritons, "brogue serve ran no tritonserver at the end"
    alive = [p.pid for p in tritons if _running(p)]
    assert not alive, f"tritonserver {alive} outlived brogue serve"


def test_killed_triton_is_not_ready_then_back_with_the_same_transcript(served, demo_repo):
    proc, http, log = served
    audio = demo_speech(np.random.default_rng(21), 2.5)
    data = pcm16(audio).tobytes()
    url = f"ws://127.0.0.1:{http}/v1/stream"
    before = finals_text(asyncio.run(stream_ws(url, DEMO_KEYS["base"], data)))
    assert before == reference_text(demo_repo, pcm16(audio) / np.float32(32768)).replace(" ", "") and before
    assert _status(http, "/readyz") == 200 and _status(http, "/livez") == 200

    (triton,) = _tritonservers(proc.pid)
    triton.send_signal(signal.SIGKILL)
    t_kill = time.monotonic()
    _until(lambda: _status(http, "/readyz") == 503, 5, "/readyz turns 503 after the kill")
    assert time.monotonic() - t_kill < 5
    assert _status(http, "/healthz") == 503 and _status(http, "/livez") == 200
    code, msg = asyncio.run(_refusal(http))
    assert code == 1013 and msg["type"] == "error" and msg["code"] == "unavailable", (code, msg)
    assert "no Triton instance is ready" in msg["message"]

    _until(lambda: _status(http, "/readyz") == 200, 60, "Triton is back and ready")
    after = finals_text(asyncio.run(stream_ws(url, DEMO_KEYS["base"], data)))
    assert after == before
    assert _metric(http, "brogue_triton_restarts_total") == 1.0
    assert not _zombies(proc.pid)
    assert "killed by SIGKILL" in log.read_text()


def test_three_kills_in_a_row_back_off_and_leave_no_zombies(served):
    proc, http, log = served
    pids = set()
    for i in range(3):
        (triton,) = _until(lambda: _tritonservers(proc.pid), 60, "a tritonserver runs")
        pids.add(triton.pid)
        _until(lambda: _status(http, "/readyz") == 200, 60, f"ready before kill {i + 1}")
        if i:  # the supervisor has seen its restart through (not only the gateway its readiness)
            _until(lambda: f"restarted (pid {triton.pid})" in log.read_text(), 60, f"restart {i} complete")
        triton.send_signal(signal.SIGKILL)
        _until(lambda: _status(http, "/readyz") == 503, 5, f"not ready after kill {i + 1}")
    _until(lambda: _status(http, "/readyz") == 200, 90, "ready after the third restart")
    assert len(pids) == 3
    delays = [float(d) for d in re.findall(r"restart \d+ in ([0-9.]+) s", log.read_text())]
    assert delays == [1.0, 2.0, 4.0], delays  # restarts close together: the delay doubles
    assert _metric(http, "brogue_triton_restarts_total") == 3.0
    assert not _zombies(proc.pid)


def test_a_triton_that_cannot_start_stops_brogue_serve_with_its_reason(demo_repo, tmp_path):
    empty = tmp_path / "repo"
    empty.mkdir()
    tenants = tmp_path / "tenants.toml"
    write_tenants(tenants, {})
    r = subprocess.run([sys.executable, "-m", "brogue.cli", "serve", "--model-repository", str(empty),
                        "--model-dir", str(demo_repo.model_dir), "--tenants", str(tenants), "--http-port",
                        str(free_port()), "--grpc-port", str(free_port()), "--admin-port", str(free_port())],
                       capture_output=True, text=True, timeout=300)
    out = " ".join((r.stdout + r.stderr).split())
    assert r.returncode == 2, out[-3000:]
    assert "did not start in 3 attempts" in out, out[-3000:]
    assert "failed to poll model 'asr_streaming': model not found in any model repository" in out


def test_one_of_two_tritons_killed_harms_only_its_own_streams(demo_repo, tmp_path):
    tenants = tmp_path / "tenants.toml"
    write_tenants(tenants, demo_repo.refs, max_streams=16)
    a = TritonProcess(demo_repo.root).start(timeout=240)
    b = TritonProcess(demo_repo.root).start(timeout=240)
    http = free_port()
    log = tmp_path / "gateway.log"
    gw = subprocess.Popen([sys.executable, "-m", "brogue.cli", "serve", "--model-repository", str(demo_repo.root),
                           "--tenants", str(tenants), "--triton-url", a.grpc_url, "--triton-url", b.grpc_url,
                           "--http-port", str(http), "--grpc-port", str(free_port()), "--admin-port",
                           str(free_port())], stdout=log.open("w"), stderr=subprocess.STDOUT)
    try:
        wait_until_healthy(gw, http, log, timeout=120)
        url = f"ws://127.0.0.1:{http}/v1/stream"
        rng = np.random.default_rng(5)
        audios = [demo_speech(rng, 3.0) for _ in range(6)]
        want = [reference_text(demo_repo, pcm16(x) / np.float32(32768)).replace(" ", "") for x in audios]

        async def run_all(kill_after: float | None):
            tasks = [asyncio.create_task(stream_ws(url, DEMO_KEYS["base"], pcm16(x).tobytes(), pace=0.1))
                     for x in audios]
            if kill_after is not None:
                await asyncio.sleep(kill_after)
                os.killpg(b.pid, signal.SIGKILL)  # a crash: its streams lose it mid-way
            return await asyncio.gather(*tasks)

        results = asyncio.run(run_all(kill_after=1.0))
        done = [i for i, m in enumerate(results) if finals_text(m) == want[i] and m[-1]["type"] == "end"]
        failed = [i for i, m in enumerate(results) if any(x["type"] == "error" for x in m)]
        assert sorted(done + failed) == list(range(6)), results
        assert 0 < len(failed) < 6
        assert all(next(x for x in results[i] if x["type"] == "error")["code"] == "unavailable" for i in failed)
        _until(lambda: _metric(http, "brogue_triton_ready_instances") == 1.0, 5, "the dead instance is not ready")
        assert _status(http, "/readyz") == 200
        again = asyncio.run(run_all(kill_after=None))  # new streams all go to the live instance
        assert [finals_text(m) for m in again] == want
        b.stop()
        b.start(timeout=240)  # the same ports: the instance comes back and rejoins
        _until(lambda: _metric(http, "brogue_triton_ready_instances") == 2.0, 30, "the instance rejoins")
        assert [finals_text(m) for m in asyncio.run(run_all(kill_after=None))] == want
    finally:
        gw.terminate()
        gw.wait(30)
        a.stop()
        b.stop()


def test_a_bare_tcp_connect_logs_no_error(served):
    proc, http, log = served
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", http)):
            pass  # a TCP health checker: connect, then close
    s = socket.create_connection(("127.0.0.1", http))
    s.sendall(b"GET /v1/stream HTTP/1.1\r\nHost: x\r\n")  # a half-open handshake
    s.close()
    time.sleep(1.0)
    assert _status(http, "/livez") == 200
    text = log.read_text()
    assert "opening handshake failed" not in text and "Traceback" not in text, text[-2000:]
    assert os.path.getsize(log) < 100_000
