"""The gateway process: WebSocket + HTTP on one port, gRPC (Riva ASR, admin, health) on another.

:func:`run_gateway` serves until cancelled or signalled, then drains: live streams end cleanly. ``brogue serve`` (:func:`serve`) also starts the bundled
tritonserver on the model repository unless ``--triton-url`` points at running instances.
TLS: give a certificate and key and both ports serve TLS only.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import ssl
from dataclasses import dataclass
from pathlib import Path

import grpc

from brogue.engine.memory import host_total_bytes

from .gateway import Gateway, GatewayConfig
from .http_front import serve_http_port
from .openai import OpenAIApi, UploadLimits
from .websocket import ConnectionLimits, WebSocketFrontEnd, handshake_logger

log = logging.getLogger(__name__)

DRAIN_SECONDS = 5.0  # on shutdown, how long live streams get to end cleanly


@dataclass(frozen=True)
class Listen:
    host: str = "127.0.0.1"
    http_port: int = 8080  # WebSocket, browser page, /metrics
    grpc_port: int = 50051  # Riva's default port
    admin_host: str = "127.0.0.1"  # admin calls are bound to loopback unless configured otherwise
    admin_port: int = 50052
    tls_cert: Path | None = None
    tls_key: Path | None = None


def _grpc_servicers(gateway: Gateway, server: grpc.aio.Server) -> None:
    """Add the Riva ASR and health services to ``server``."""
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    from .riva.asr_service import add_riva_asr

    add_riva_asr(gateway, server)
    hs = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(hs, server)
    loop = asyncio.get_event_loop()

    def set_status(ready: bool) -> None:  # SERVING only while a Triton instance is ready
        status = health_pb2.HealthCheckResponse.SERVING if ready else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", "nvidia.riva.asr.RivaSpeechRecognition"):
            loop.create_task(hs.set(name, status))

    set_status(gateway.ready)
    gateway.on_ready_change.append(set_status)


async def run_gateway(config: GatewayConfig, listen: Listen = Listen(), limits: ConnectionLimits = ConnectionLimits(),
                      started: asyncio.Event | None = None, grpc_services: bool = True, handle_signals: bool = False,
                      drain_seconds: float = DRAIN_SECONDS, metrics=None,
                      upload_limits: UploadLimits = UploadLimits()) -> None:
    """Serve until cancelled, or (``handle_signals``) until SIGTERM or SIGINT; ``started`` is set
    once every port listens. Either way it drains before returning (see :func:`_drain`). The Triton
    instances are probed all along (:meth:`TritonPool.watch`): streams go to ready ones only."""
    gateway = Gateway(config, metrics)
    await gateway.check_triton()  # ModelMismatch: Triton serves another model; nothing listens yet
    watcher = asyncio.get_running_loop().create_task(gateway.pool.watch())
    drainer = asyncio.get_running_loop().create_task(gateway.models.watch())  # unloads drained model versions
    front = WebSocketFrontEnd(gateway, limits)
    ssl_ctx, grpc_creds = None, None
    if listen.tls_cert or listen.tls_key:
        if not (listen.tls_cert and listen.tls_key):
            raise ValueError("TLS needs both --tls-cert and --tls-key")
        ssl_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ssl_ctx.load_cert_chain(listen.tls_cert, listen.tls_key)
        grpc_creds = grpc.ssl_server_credentials([(Path(listen.tls_key).read_bytes(), Path(listen.tls_cert).read_bytes())])

    servers = []
    addr = f"{listen.host}:{listen.grpc_port}"
    admin_addr = f"{listen.admin_host}:{listen.admin_port}"
    if grpc_services:
        from .admin import add_admin

        grpc_server = grpc.aio.server(options=[("grpc.max_receive_message_length", 64 << 20)])
        _grpc_servicers(gateway, grpc_server)
        admin_server = grpc.aio.server(options=[("grpc.max_receive_message_length", 256 << 20)])  # adapter uploads
        add_admin(gateway, admin_server)
        for server, a in ((grpc_server, addr), (admin_server, admin_addr)):
            server.add_secure_port(a, grpc_creds) if grpc_creds else server.add_insecure_port(a)
            await server.start()
            servers.append(server)
    # WebSocket, page, /metrics and the OpenAI API (/v1/audio/transcriptions, /v1/models) share the port
    ws_server = await serve_http_port(front.handler, front.process_request, OpenAIApi(gateway, upload_limits),
                                      listen.host, listen.http_port, max_size=limits.max_frame_bytes, ssl=ssl_ctx,
                                      ping_interval=limits.keepalive_seconds, ping_timeout=limits.keepalive_seconds,
                                      logger=handshake_logger())
    scheme = "wss" if ssl_ctx else "ws"
    log.info("gateway: %s://%s:%d/v1/stream, page, /metrics and the OpenAI API (/v1/audio/transcriptions) on the "
             "same port; gRPC %s; admin %s", scheme, listen.host, listen.http_port, addr, admin_addr)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    handled = []
    if handle_signals:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
            handled.append(sig)
    if started is not None:
        started.set()
    try:
        await stop.wait()
        log.info("gateway: stopping; draining live streams (up to %g s)", drain_seconds)
    finally:
        for sig in handled:
            loop.remove_signal_handler(sig)
        await _drain(front, ws_server, servers, drain_seconds)
        watcher.cancel()
        drainer.cancel()
        await gateway.pool.close()


async def _drain(front: WebSocketFrontEnd, ws_server, grpc_servers: list, seconds: float) -> None:
    """Stop taking streams and end the live ones cleanly within ``seconds``.

    WebSocket streams end as if their client had sent ``close``: finals for all audio received,
    ``end``, then close 1001 (going away). gRPC calls and OpenAI API requests get ``seconds`` to
    finish, then are cancelled (the client sees CANCELLED, or a cut HTTP connection). Every
    stream's cleanup ends its Triton sequence (END), so Triton frees the state now rather than at
    its idle sweep."""
    ws_server.close(close_connections=False)  # no new connections; live ones go on
    front.gateway.shutdown()
    jobs = [ws_server.wait_closed(), *(s.stop(seconds) for s in grpc_servers)]
    try:
        await asyncio.wait_for(asyncio.gather(*jobs, return_exceptions=True), seconds)
    except asyncio.TimeoutError:
        log.warning("gateway: streams still open after %g s are dropped", seconds)
        ws_server.close(close_connections=True)
        try:
            await asyncio.wait_for(ws_server.wait_closed(), 2)
        except asyncio.TimeoutError:
            log.warning("gateway: WebSocket handlers still running at exit")


def serve(model_repository: Path, *, tenants: Path, triton_urls: list[str], listen: Listen = Listen(),
          model_dir: Path | None = None, latencies: tuple[str, ...] = (),
          limits: ConnectionLimits = ConnectionLimits(), triton_timeout: float = 240.0,
          supervision: dict | None = None, upload_limits: UploadLimits = UploadLimits(),
          memory_budget: int | None = None, triton_repository: Path | None = None,
          model_config_name: str = "") -> None:
    """Start the bundled tritonserver (unless ``triton_urls`` are given) and the gateway; block.

    The bundled Triton serves ``model_dir`` (default ``MODEL_REPOSITORY/exported/demo``) at
    ``latencies`` (default: all the model has), the same model the gateway decodes with, and is
    restarted whenever it exits (:class:`~brogue.server.triton_supervisor.TritonSupervisor`, with
    ``supervision`` as its keyword arguments). Instances at ``triton_urls`` belong to someone else:
    they are asked which model they serve (a mismatch stops the gateway) and probed, never restarted.

    ``memory_budget``: bytes per Triton instance for model versions (docs/models.md); None: 3/4 of
    this host's memory for the bundled Triton, no limit for instances at ``triton_urls``.
    ``triton_repository``: where those instances see ``model_repository`` (default: the same path);
    ``model_config_name``: the ``--model-config-name`` they run with (model versions get that config)."""
    import contextlib
    import signal

    from .metrics import Metrics
    from .triton_supervisor import TritonSupervisor
    from .tritonserver import TritonProcess, _raise_keyboard_interrupt

    # SIGTERM (systemd, kubernetes, `kill`) must unwind like Ctrl-C, so the tritonserver we started stops too.
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)

    model_dir = Path(model_dir or model_repository / "exported" / "demo").resolve()
    metrics = Metrics()
    if memory_budget is None and not triton_urls:
        memory_budget = host_total_bytes() * 3 // 4
    with contextlib.ExitStack() as stack:
        if not triton_urls:
            params = {"MODEL_DIR": str(model_dir), "LATENCIES": ",".join(latencies)}
            triton = TritonProcess(model_repository, models=("asr_streaming",), parameters={"asr_streaming": params})
            stack.enter_context(TritonSupervisor(triton, start_timeout=triton_timeout,
                                                 on_restart=metrics.triton_restarts.inc,
                                                 **(supervision or {})).start())
            triton_urls = [triton.grpc_url]
            log.info("tritonserver ready at %s (log: %s)", triton.grpc_url, triton.log_path)
        config = GatewayConfig(Path(model_dir), Path(tenants), tuple(triton_urls),
                               store_dir=Path(model_repository) / "adapters", latencies=tuple(latencies),
                               model_repository=Path(model_repository).resolve(),
                               triton_repository=triton_repository, memory_budget=memory_budget,
                               model_config_name=model_config_name)
        try:
            # the loop handles SIGTERM/SIGINT from here on, and drains before Triton is stopped
            asyncio.run(run_gateway(config, listen, limits, handle_signals=True, metrics=metrics,
                                    upload_limits=upload_limits))
        except KeyboardInterrupt:
            pass
