"""``brogue serve`` as a child process on loopback: its addresses, and the wait until it answers.

The test suite and the benchmarks (``brogue.bench.stack``) both run the real gateway as a separate
process; this module is what they share. :class:`GatewayAddresses` names the loopback URLs of a
gateway's three ports; :func:`wait_until_healthy` polls ``/healthz`` until the gateway answers, and
fails at once with the log's tail if the process exits first.
"""

from __future__ import annotations

import ssl
import subprocess
import time
import urllib.request
from pathlib import Path


class GatewayAddresses:
    """Mixin: loopback URLs of a gateway listening on ``http_port``, ``grpc_port``, ``admin_port``."""

    http_port: int
    grpc_port: int
    admin_port: int

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.http_port}/v1/stream"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def admin_url(self) -> str:
        return f"127.0.0.1:{self.admin_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/metrics"


def wait_until_healthy(process: subprocess.Popen, http_port: int, log_file: Path, *, timeout: float = 60.0,
                       tls: bool = False) -> None:
    """Block until ``https?://127.0.0.1:PORT/healthz`` answers.

    Raises:
        RuntimeError: the process exited (its exit code and log tail in the message), or it did not
            answer within ``timeout`` seconds (then it is killed).
    """
    url = f"{'https' if tls else 'http'}://127.0.0.1:{http_port}/healthz"
    ctx = ssl._create_unverified_context() if tls else None  # a test's self-signed certificate
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"gateway exited with {process.returncode}:\n{_tail(log_file)}")
        try:
            urllib.request.urlopen(url, timeout=1, context=ctx)
            return
        except OSError:
            if time.monotonic() > deadline:
                process.kill()
                raise RuntimeError(f"gateway not up within {timeout:g} s:\n{_tail(log_file)}") from None
            time.sleep(0.1)


def _tail(log_file: Path, n: int = 3000) -> str:
    try:
        return Path(log_file).read_text(errors="replace")[-n:]
    except OSError:
        return "(no log)"
