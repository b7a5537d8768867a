"""Keep the tritonserver that ``brogue serve`` owns running.

:class:`TritonSupervisor` starts a :class:`~brogue.server.tritonserver.TritonProcess` and watches it
from a thread. When the server exits (an OOM kill, a crash, SIGKILL), the supervisor logs its exit
status, reaps it (no zombie is left), cleans up after it (its python stubs, its shared memory, its
run folder) and starts it again on the same ports, after a delay that doubles on each restart that
follows closely on the last one (``backoff`` seconds up to ``backoff_cap``; back to ``backoff`` once
a server has stayed up ``stable_s`` seconds). The gateway's own health probes see the instance go
and come back (:meth:`~brogue.server.triton_client.TritonPool.watch`), and warm the new server's
adapter bank before new streams reach it; pinned adapters come back with the model's config.

The first start is tried ``start_tries`` times; if the server never becomes ready (a wrong model
repository, a model that fails to load), :meth:`start` raises with the reason from Triton's log.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable

from .tritonserver import TritonProcess, TritonServerError

log = logging.getLogger(__name__)


def describe_exit(code: int) -> str:
    """``code`` of ``Popen.returncode`` in words: a negative code is the signal that killed it."""
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


class TritonSupervisor:
    """Restarts ``process`` whenever it exits, until :meth:`stop`; ``on_restart()`` runs per restart."""

    def __init__(self, process: TritonProcess, *, start_timeout: float = 240.0, start_tries: int = 3,
                 backoff: float = 1.0, backoff_cap: float = 30.0, stable_s: float = 60.0,
                 on_restart: Callable[[], None] = lambda: None):
        self.process = process
        self.start_timeout, self.start_tries = start_timeout, start_tries
        self.backoff, self.backoff_cap, self.stable_s = backoff, backoff_cap, stable_s
        self.on_restart = on_restart
        self.restarts = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # start/stop of the process: the watcher thread and stop()

    def start(self) -> "TritonSupervisor":
        """Start the server (up to ``start_tries`` times), then watch it. Raises
        :class:`TritonServerError` with the last attempt's reason when it never became ready."""
        error = None
        for attempt in range(1, self.start_tries + 1):
            try:
                self.process.start(timeout=self.start_timeout)
                break
            except TritonServerError as e:
                error = e
                log.error("tritonserver did not start (attempt %d of %d): %s", attempt, self.start_tries, e)
        else:
            raise TritonServerError(f"tritonserver did not start in {self.start_tries} attempts; the last: {error}")
        self._thread = threading.Thread(target=self._watch, name="triton-supervisor", daemon=True)
        self._thread.start()
        return self

    def _watch(self) -> None:
        delay = self.backoff
        up_since = time.monotonic()
        while not self._stop.is_set():
            code = self.process.poll()  # reaps the server once it has exited
            if code is None:
                self._stop.wait(0.2)
                continue
            if time.monotonic() - up_since >= self.stable_s:
                delay = self.backoff
            self.restarts += 1
            log.error("tritonserver (pid %s) exited: %s; restart %d in %.1f s. Log tail:\n%s",
                      self.process.pid, describe_exit(code), self.restarts, delay, self.process.log_tail(15))
            self.on_restart()
            with self._lock:
                if self._stop.is_set():
                    return
                self.process.stop()  # its stubs, shared memory and run folder
            while not self._stop.wait(delay):
                with self._lock:
                    if self._stop.is_set():
                        return
                    try:
                        self.process.start(timeout=self.start_timeout)
                    except TritonServerError as e:
                        delay = min(delay * 2, self.backoff_cap)
                        log.error("tritonserver restart failed, next try in %.1f s: %s", delay, e)
                        continue
                log.info("tritonserver restarted (pid %s) at %s", self.process.pid, self.process.grpc_url)
                break
            up_since = time.monotonic()
            delay = min(delay * 2, self.backoff_cap)

    def stop(self) -> None:
        """Stop watching and stop the server."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        with self._lock:
            self.process.stop()

    def __enter__(self) -> "TritonSupervisor":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
