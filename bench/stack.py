"""The system under test: a tritonserver and a gateway (``brogue serve --triton-url``) on loopback.

:class:`Stack` copies a model repository into a work folder, publishes extra copies of its adapters
there until the bank holds ``adapters`` different ones, writes a tenants file with one tenant per
adapter plus ``base`` (keys ``bench-NAME``), and starts both servers as child processes. Each can be
killed and restarted on the same ports (the fault scripts do), and their PIDs feed :mod:`.procstat`.
The committed repository is never written to.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from brogue.server.gateway_process import GatewayAddresses, wait_until_healthy
from brogue.server.tenants import key_hash
from brogue.server.tritonserver import TritonProcess, _free_ports

from brogue.adapters import publish_adapter
from brogue.adapters import read_adapter
from brogue.engine.metadata import ModelMeta

ADMIN_TOKEN = "bench-admin-token"


def _parameter_re(key: str) -> re.Pattern:
    return re.compile(rf'(key: "{key}", value: \{{ string_value: )"([^"]*)"')


def parameter(config: str, key: str) -> str | None:
    """The value of ``parameters`` entry ``key`` in a config.pbtxt's text, or None."""
    m = _parameter_re(key).search(config)
    return None if m is None else m.group(2)


def set_parameter(config: str, key: str, value) -> str:
    """``config`` (config.pbtxt text) with ``parameters`` entry ``key`` set to ``value``."""
    return _parameter_re(key).sub(lambda m: f'{m.group(1)}"{value}"', config)


@dataclass(frozen=True)
class BenchTenant:
    name: str
    key: str
    adapter: str  # name@version, "" = base


@dataclass
class Stack(GatewayAddresses):
    """``repo``: a model repository with ``exported/MODEL``, ``adapters/`` and ``asr_streaming/``."""

    repo: Path
    workdir: Path
    model: str = "demo"
    adapters: int = 8  # distinct adapters in the bank (copies of the repo's ones are added if fewer)
    bank_slots: int = 16
    max_streams: int = 512  # per tenant: the bench measures the servers, not the tenant limits
    tenants: list[BenchTenant] = field(default_factory=list)
    decoder: str = "auto"  # asr_streaming's DECODER: auto (the model's LM if any) | greedy | lm
    threads: int | None = None  # asr_streaming's INTRA_OP_THREADS (None: the repository's)
    queue_delay_us: int | None = None  # the sequence batcher's max_queue_delay_microseconds (None: the repository's)
    owned_triton: bool = False  # `brogue serve` starts and supervises its own tritonserver
    gateway_args: tuple[str, ...] = ()  # more `brogue serve` options (e.g. --keepalive-seconds 5)
    triton_exit_timeout: int = 10  # seconds a stopping tritonserver waits for open sequences
    triton: TritonProcess | None = None
    gateway: subprocess.Popen | None = None

    def __post_init__(self):
        self.workdir = Path(self.workdir)
        self.root = self.workdir / "repo"
        self.http_port, self.grpc_port, self.admin_port = _free_ports("127.0.0.1", (None, None, None))
        self.triton_grpc_port = None

    # -- set up ---------------------------------------------------------------------------------

    def prepare(self) -> "Stack":
        if self.root.exists():
            shutil.rmtree(self.root)
        self.root.mkdir(parents=True)
        shutil.copytree(self.repo / "exported" / self.model, self.root / "exported" / self.model)
        shutil.copytree(self.repo / "asr_streaming", self.root / "asr_streaming")
        store = self.root / "adapters"
        if (self.repo / "adapters").is_dir():
            shutil.copytree(self.repo / "adapters", store)
        store.mkdir(exist_ok=True)
        cfg = (self.root / "asr_streaming" / "config.pbtxt").read_text()
        cfg = cfg.replace('string_value: "exported/demo"', f'string_value: "exported/{self.model}"')
        cfg = set_parameter(cfg, "BANK_SLOTS", self.bank_slots)
        cfg = set_parameter(cfg, "DECODER", self.decoder)
        if self.threads is not None:
            cfg = set_parameter(cfg, "INTRA_OP_THREADS", self.threads)
        if self.queue_delay_us is not None:
            cfg = re.sub(r"max_queue_delay_microseconds: \d+", f"max_queue_delay_microseconds: {self.queue_delay_us}", cfg)
        (self.root / "asr_streaming" / "config.pbtxt").write_text(cfg)
        refs = self._adapter_refs(store)
        self.tenants = [BenchTenant("base", "bench-base", "")] + [
            BenchTenant(ref.split("@")[0], f"bench-{ref.split('@')[0]}", ref) for ref in refs]
        lines = [f'admin_token_sha256 = "{key_hash(ADMIN_TOKEN)}"', ""]
        for t in self.tenants:
            lines += [f"[tenants.{t.name}]", f'api_keys_sha256 = ["{key_hash(t.key)}"]', f'adapter = "{t.adapter}"',
                      f"max_streams = {self.max_streams}", "max_stream_seconds = 36000", ""]
        self.tenants_file.write_text("\n".join(lines))
        return self

    def _adapter_refs(self, store: Path) -> list[str]:
        """The newest version of each adapter in the store, topped up with renamed copies."""
        meta = ModelMeta.load(self.root / "exported" / self.model)
        refs = []
        for d in sorted(p for p in store.iterdir() if p.is_dir()):
            versions = sorted((v for v in d.iterdir() if (v / "manifest.json").is_file()), key=lambda v: v.stat().st_mtime)
            if versions:
                refs.append(f"{d.name}@{versions[-1].name}")
        if not refs:
            raise RuntimeError(f"{self.repo}/adapters holds no adapter: the bench needs at least one")
        i = 0
        while len(refs) < self.adapters:
            name, version = refs[i % len(refs)].split("@")
            w = read_adapter(store / name / version, None)
            arrays = {"ln_weight": w.ln_weight, "ln_bias": w.ln_bias, "down": w.down, "up": w.up}
            m = publish_adapter(store, arrays, name=f"{name}-copy{i}", version="v1", base_fingerprint=meta.fingerprint)
            refs.append(f"{m.name}@{m.version}")
            i += 1
        return refs[: self.adapters]

    @property
    def intra_op_threads(self) -> int:
        """The INTRA_OP_THREADS asr_streaming runs with (0: ORT's default, one per core)."""
        return int(parameter((self.root / "asr_streaming" / "config.pbtxt").read_text(), "INTRA_OP_THREADS") or 0)

    @property
    def tenants_file(self) -> Path:
        return self.workdir / "tenants.toml"

    @property
    def meta(self) -> ModelMeta:
        return ModelMeta.load(self.root / "exported" / self.model)

    # -- processes -------------------------------------------------------------------------------

    def start_triton(self, timeout: float = 240) -> None:
        self.triton = TritonProcess(self.root, models=("asr_streaming",), grpc_port=self.triton_grpc_port,
                                    exit_timeout=self.triton_exit_timeout,
                                    log_file=self.workdir / "triton.log").start(timeout=timeout)
        self.triton_grpc_port = self.triton.grpc_port

    def kill_triton(self) -> None:
        """A crash: SIGKILL, then reap the stubs and shared memory."""
        os.kill(self.triton.pid, signal.SIGKILL)
        self.triton.stop()

    def start_gateway(self, timeout: float = 60) -> None:
        log = (self.workdir / "gateway.log").open("a")
        cmd = [sys.executable, "-m", "brogue.cli", "serve", "--model-repository", str(self.root),
               "--model-dir", str(self.root / "exported" / self.model), "--tenants", str(self.tenants_file),
               *([] if self.owned_triton else ["--triton-url", self.triton.grpc_url]), "--http-port", str(self.http_port),
               "--grpc-port", str(self.grpc_port), "--admin-port", str(self.admin_port), "--log-level", "WARNING",
               *self.gateway_args]
        self.gateway = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        wait_until_healthy(self.gateway, self.http_port, self.workdir / "gateway.log", timeout=timeout)

    def stop_gateway(self, sig: int = signal.SIGTERM) -> None:
        if self.gateway is not None and self.gateway.poll() is None:
            self.gateway.send_signal(sig)
            try:
                self.gateway.wait(15)
            except subprocess.TimeoutExpired:
                self.gateway.kill()
                self.gateway.wait()

    def start(self) -> "Stack":
        self.prepare()
        if self.owned_triton:
            self.start_gateway(timeout=300)
        else:
            self.start_triton()
            self.start_gateway()
        return self

    def owned_triton_pid(self) -> int | None:
        """The tritonserver that the gateway (``owned_triton``) runs now, or None between restarts."""
        import psutil

        for p in psutil.Process(self.gateway.pid).children():
            try:
                if p.name() == "tritonserver" and p.status() != psutil.STATUS_ZOMBIE:
                    return p.pid
            except psutil.NoSuchProcess:  # exited meanwhile
                pass
        return None

    def stop(self) -> None:
        self.stop_gateway()
        if self.triton is not None:
            self.triton.stop()

    def __enter__(self) -> "Stack":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def pids(self) -> dict[str, int]:
        """``gateway`` and ``triton`` (the tritonserver; its python stubs are its children)."""
        out = {}
        if self.gateway is not None and self.gateway.poll() is None:
            out["gateway"] = self.gateway.pid
        if self.triton is not None and self.triton.pid:
            out["triton"] = self.triton.pid
        elif self.owned_triton and "gateway" in out and self.owned_triton_pid():
            out["triton"] = self.owned_triton_pid()
        return out
