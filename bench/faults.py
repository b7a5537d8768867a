"""The fault scripts (``brogue faults``): bounded in time, loopback only.

Each scenario runs real callers (:mod:`.load`) against a real :class:`~.stack.Stack`, does one
thing to it mid-load, and returns numbers: streams run, errors by kind, what happened to the streams
the fault hit, and whether streams after it succeed. A scenario's ``ok`` is its pass/fail verdict;
the numbers are the evidence.

- ``triton_restart``: tritonserver is killed (SIGKILL) and restarted on the same port;
- ``gateway_restart``: the gateway is stopped (SIGTERM) and started again: live streams are drained
  (finals, then WebSocket close 1001 / Riva status OK), none is cut abruptly, later ones succeed;
- ``gateway_crash``: the same with SIGKILL: an unmodified Riva client streaming across it must get a
  clean gRPC error (UNAVAILABLE), and later streams succeed;
- ``adapter_publish``: a new adapter version is published and assigned every 10 s;
- ``slow_client``: a client that never reads its results, beside normal callers;
- ``supervised_triton``: ``brogue serve`` owns its tritonserver, which is SIGKILLed every 5 minutes
  for 30 minutes under load; only Brogue's supervisor brings it back;

The soak (a fixed load for many minutes) is :mod:`.soak`.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

from .clients import StreamRecord, pcm16_of
from .load import Clip, _caller, percentiles
from .procstat import rss_slope, tree_usage
from .stack import ADMIN_TOKEN, Stack

CLEAN = {"unavailable", "UNAVAILABLE"}


class BackgroundLoad:
    """``n`` callers in a thread until :meth:`stop` (or ``seconds``)."""

    def __init__(self, stack: Stack, clips: list[Clip], n: int, *, seconds: float = 3600, apis=("ws", "riva"),
                 tenants=None, jitter_ms: float = 20.0, spread_s: float = 2.0, seed: int = 0):
        self.records: list[StreamRecord] = []
        self._stop_at = time.monotonic() + seconds
        self._stopped = threading.Event()
        args = (stack, clips, n, list(apis), tenants, jitter_ms, spread_s, seed)
        self._thread = threading.Thread(target=self._run, args=args, daemon=True, name="load")

    def _run(self, stack, clips, n, apis, tenants, jitter_ms, spread_s, seed):
        import grpc

        async def main():
            channel = grpc.insecure_channel(stack.grpc_url)  # Riva streams block in threads (clients.py)
            done = lambda: self._stopped.is_set() or time.monotonic() >= self._stop_at  # noqa: E731
            try:
                await asyncio.gather(*(_caller(stack, i, clips, apis, done, spread_s, jitter_ms, seed, self.records,
                                               channel, tenants) for i in range(n)))
            finally:
                channel.close()

        asyncio.run(main())

    def start(self) -> "BackgroundLoad":
        self._thread.start()
        return self

    def stop(self) -> list[StreamRecord]:
        self._stopped.set()
        self._thread.join()
        return self.records


def _code(rec: StreamRecord) -> str | None:
    return None if rec.error is None else rec.error.split(":", 1)[0]


def summary(records: list[StreamRecord]) -> dict:
    codes: dict[str, int] = {}
    for r in records:
        if r.error:
            codes[_code(r)] = codes.get(_code(r), 0) + 1
    ok = [r for r in records if r.finished]
    early = sum(1 for r in records if r.ended_early)
    return {"streams": len(records), "ok": len(ok), "ended_early": early, "errors": len(records) - len(ok) - early,
            "error_codes": codes,
            "final_latency": percentiles([r.final_latency_s for r in ok])}


def _window(records, t0, t1):
    """Streams that were live at some point of [t0, t1]."""
    return [r for r in records if r.t_start <= t1 and r.t_end >= t0]


def triton_restart(stack: Stack, clips: list[Clip], n: int = 8, down_s: float = 3.0, warm_s: float = 10.0,
                   after_s: float = 20.0) -> dict:
    load = BackgroundLoad(stack, clips, n).start()
    time.sleep(warm_s)
    gw_pid = stack.gateway.pid
    t_kill = time.monotonic()
    stack.kill_triton()
    time.sleep(down_s)
    stack.start_triton()
    t_up = time.monotonic()
    time.sleep(after_s)
    records = load.stop()
    # Settling time once Triton is ready: the gateway's gRPC connection retries within 1 s (its
    # reconnect backoff cap), and the pool retries an instance 2 s after its last failure.
    settle = 3.5
    hit = [r for r in _window(records, t_kill, t_up + settle) if r.error]
    before = [r for r in records if r.t_end < t_kill]
    after = [r for r in records if r.t_start > t_up + settle]
    last_error = max((r.t_end for r in records if r.error), default=t_up)
    unclean = sorted({r.error for r in hit if _code(r) not in CLEAN})
    return {"scenario": "triton_restart", **summary(records), "restart_s": round(t_up - t_kill, 1),
            "last_error_after_ready_s": round(last_error - t_up, 2),
            "streams_hit": len(hit), "hit_codes": sorted({_code(r) for r in hit}), "unclean_errors": unclean[:5],
            "before_errors": sum(1 for r in before if r.error), "after_streams": len(after),
            "after_errors": sum(1 for r in after if r.error), "gateway_restarted": stack.gateway.pid != gw_pid,
            "ok": not unclean and len(after) > 0 and not any(r.error for r in after) and not any(r.error for r in before)
            and stack.gateway.poll() is None and stack.gateway.pid == gw_pid}


def _riva_across(stack: Stack, audio: np.ndarray, out: dict) -> None:
    """The unmodified nvidia-riva-client streaming ``audio`` in real time; records how it ended."""
    import grpc
    import riva.client

    auth = riva.client.Auth(uri=stack.grpc_url, metadata_args=[["x-api-key", stack.tenants[0].key]])
    asr = riva.client.ASRService(auth)
    cfg = riva.client.StreamingRecognitionConfig(
        config=riva.client.RecognitionConfig(encoding=riva.client.AudioEncoding.LINEAR_PCM, sample_rate_hertz=16000,
                                             language_code="en-US", max_alternatives=1), interim_results=True)
    pcm = pcm16_of(audio)

    def chunks():
        for i in range(0, len(pcm), 3200):
            time.sleep(0.1)
            yield pcm[i:i + 3200]

    try:
        for _ in asr.streaming_response_generator(audio_chunks=chunks(), streaming_config=cfg):
            pass
        out["outcome"] = "completed"
    except grpc.RpcError as e:
        out["outcome"] = f"{e.code().name}: {e.details()}"
    except Exception as e:  # noqa: BLE001 - anything else is an unclean failure, reported as such
        out["outcome"] = f"unclean {type(e).__name__}: {e}"


def gateway_restart(stack: Stack, clips: list[Clip], n: int = 8, warm_s: float = 8.0, after_s: float = 20.0,
                    sig: int = signal.SIGTERM) -> dict:
    """The gateway stopped under load with ``sig``, then started again on the same ports.

    SIGTERM is a graceful restart: live streams end early but cleanly (WebSocket: finals, ``end``,
    close 1001; Riva: final results, status OK). SIGKILL is a crash: their clients get a clean
    error (WebSocket 1006, Riva ``UNAVAILABLE``). Either way later streams must succeed."""
    load = BackgroundLoad(stack, clips, n).start()
    time.sleep(warm_s)
    long_audio = np.concatenate([np.frombuffer(c.pcm16, "<i2").astype(np.float32) / 32768 for c in clips] * 3)[:16000 * 30]
    riva_out: dict = {}
    rt = threading.Thread(target=_riva_across, args=(stack, long_audio, riva_out))
    rt.start()
    time.sleep(3)
    t_stop = time.monotonic()
    stack.stop_gateway(sig)
    stack.start_gateway()
    t_up = time.monotonic()
    time.sleep(after_s)
    records = load.stop()
    rt.join()
    hit = [r for r in _window(records, t_stop, t_up) if r.error]
    after = [r for r in records if r.t_start > t_up + 0.5]
    # streams cut without a clean end (no close frame, reset); refused connects while the gateway
    # is down are clean: the caller retries
    abrupt = [r for r in hit if any(k in r.error for k in ("1006", "no close frame", "connection closed"))]
    outcome = riva_out.get("outcome", "")
    expected = ("completed",) if sig == signal.SIGTERM else ("UNAVAILABLE", "CANCELLED")
    riva_clean = outcome.split(":")[0] in expected
    name = "gateway_restart" if sig == signal.SIGTERM else "gateway_crash"
    return {"scenario": name, **summary(records), "restart_s": round(t_up - t_stop, 1),
            "streams_hit": len(hit), "hit_errors": sorted({r.error for r in hit})[:5], "after_streams": len(after),
            "after_errors": sum(1 for r in after if r.error), "riva_client": riva_out.get("outcome"),
            "abrupt_ends": len(abrupt),
            "ok": riva_clean and len(after) > 0 and not any(r.error for r in after)
            and (sig != signal.SIGTERM or not abrupt)}


def gateway_crash(stack: Stack, clips: list[Clip], n: int = 8, warm_s: float = 8.0, after_s: float = 20.0) -> dict:
    return gateway_restart(stack, clips, n, warm_s, after_s, sig=signal.SIGKILL)


def adapter_publish(stack: Stack, clips: list[Clip], n: int = 8, seconds: float = 60, every: float = 10) -> dict:
    import tempfile

    from brogue.adapters import publish_adapter
    from brogue.adapters import read_adapter
    from brogue.clients.admin import AdminClient, push_request

    tenants = [t for t in stack.tenants if t.adapter]
    target = tenants[0]
    name, version = target.adapter.split("@")
    w = read_adapter(stack.root / "adapters" / name / version, None)
    rng = np.random.default_rng(0)
    load = BackgroundLoad(stack, clips, n, tenants=tenants).start()
    published = []
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp, AdminClient(stack.admin_url, ADMIN_TOKEN) as admin:
        k = 0
        while time.monotonic() - t0 < seconds:
            time.sleep(max(0.0, t0 + (k + 1) * every - time.monotonic()))
            k += 1
            arrays = {"ln_weight": w.ln_weight, "ln_bias": w.ln_bias, "down": w.down,
                      "up": (w.up + 1e-4 * rng.standard_normal(w.up.shape)).astype(np.float32)}
            m = publish_adapter(tmp, arrays, name=name, version=f"bench{k}", base_fingerprint=w.manifest.base_fingerprint)
            t = time.monotonic()
            admin.publish(push_request(Path(tmp) / name / m.version))
            admin.assign(target.name, f"{name}@{m.version}")
            published.append(round((time.monotonic() - t) * 1000, 1))
    time.sleep(5)
    records = load.stop()
    s = summary(records)
    on_target = [r for r in records if r.tenant == target.name]
    return {"scenario": "adapter_publish", **s, "publishes": len(published), "publish_assign_ms": published,
            "target_tenant_streams": len(on_target), "ok": s["errors"] == 0 and len(published) > 0}


async def _never_reads(stack: Stack, audio: bytes, rcvbuf: int, timeout: float) -> dict:
    """A client with a tiny receive buffer that streams ``audio`` in real time and reads nothing."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", stack.http_port))
    t0 = time.monotonic()
    sent = 0
    async with connect(stack.ws_url, sock=sock, additional_headers={"Authorization": f"Bearer {stack.tenants[0].key}"},
                       max_queue=4, ping_interval=None) as ws:
        # no pings of its own: this client's keepalive would time out too (the server's pongs queue
        # behind the results it does not read) and it would hang up first, racing the server's check
        # no endpoints: one long utterance, whose partials carry its whole transcript so far
        await ws.send('{"type": "config", "endpointing": {"stop_history_ms": 60000, "stop_history_eou_ms": 60000}}')
        try:
            async with asyncio.timeout(timeout):
                # one 1 s frame a second, like a live caller: the stream outlasts the gateway's
                # patience whatever the host's speed (sent all at once, a fast host could finish it
                # with every result still fitting in the buffers)
                for i in range(0, len(audio), 32000):
                    await asyncio.sleep(max(0.0, t0 + sent - time.monotonic()))
                    await ws.send(audio[i:i + 32000])
                    sent += 1
                await ws.wait_closed()
        except ConnectionClosed:
            pass
        except TimeoutError:
            return {"disconnected": False, "after_s": None, "frames_sent": sent}
        # what the server said as it closed (it may be queued behind unread results)
        code = ws.close_code if ws.close_code is not None else (ws.protocol.close_rcvd.code if ws.protocol.close_rcvd else None)
        reason = ws.close_reason or (ws.protocol.close_rcvd.reason if ws.protocol.close_rcvd else "")
    return {"disconnected": True, "after_s": round(time.monotonic() - t0, 1), "frames_sent": sent,
            "close_code": code, "close_reason": reason}


def _errors_total(stack: Stack, kind: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(stack.metrics_url, timeout=10).read().decode()
    return sum(s.value for f in text_string_to_metric_families(text) if f.name == "brogue_errors"
               for s in f.samples if s.name == "brogue_errors_total" and s.labels.get("kind") == kind)


def slow_client(stack: Stack, clips: list[Clip], n: int = 4, audio_s: float = 600, rcvbuf: int = 4096,
                timeout: float = 180) -> dict:
    """A client that never reads, beside ``n`` normal callers: it must be dropped and counted as
    ``slow_client``, either when its results fill the bounded buffers and a send waits longer than
    the send timeout, or, with little to read, when its unanswered keepalive pings time out (twice
    ``brogue serve --keepalive-seconds``, 20 + 20 s by default); the callers must not notice, and the gateway's RSS must not grow with what it did not read."""
    one = b"".join(c.pcm16 for c in clips)
    audio = (one * int(audio_s * 32000 / len(one) + 1))[: int(audio_s * 32000)]
    _, rss0 = tree_usage(stack.gateway.pid)
    slow_before = _errors_total(stack, "slow_client")
    load = BackgroundLoad(stack, clips, n, tenants=stack.tenants[1:] or None).start()
    slow = asyncio.run(_never_reads(stack, audio, rcvbuf, timeout))
    _, rss1 = tree_usage(stack.gateway.pid)
    time.sleep(5)
    records = load.stop()
    s = summary(records)
    slow["server_counted_slow_client"] = _errors_total(stack, "slow_client") - slow_before
    return {"scenario": "slow_client", **s, "slow": slow, "gateway_rss_mb": [round(rss0 / 2**20, 1), round(rss1 / 2**20, 1)],
            "ok": slow["disconnected"] and slow["server_counted_slow_client"] >= 1 and s["errors"] == 0}


def _readyz(stack: Stack) -> bool:
    try:
        return urllib.request.urlopen(f"http://127.0.0.1:{stack.http_port}/readyz", timeout=2).status == 200
    except OSError:
        return False


def supervised_triton(stack: Stack, clips: list[Clip], n: int = 28, minutes: float = 30.0, every_s: float = 300.0,
                      sample_s: float = 15.0, window_s: float = 5.0, log=print) -> dict:
    """``brogue serve`` with its own tritonserver (``stack.owned_triton``) under ``n`` callers for
    ``minutes``; every ``every_s`` seconds the tritonserver is SIGKILLed, and nothing but Brogue's
    supervisor restarts it. Per kill: the streams it hit (live at the kill), and the seconds until
    ``/readyz`` answers 200 again. Errors outside the windows [kill, ready + ``window_s``] must be 0."""
    if not stack.owned_triton:
        raise ValueError("supervised_triton needs a Stack(owned_triton=True): brogue serve must own Triton")
    load = BackgroundLoad(stack, clips, n).start()
    t0 = time.monotonic()
    kills, samples = [], []
    next_kill, next_sample = t0 + every_s, t0 + sample_s
    while time.monotonic() - t0 < minutes * 60:
        now = time.monotonic()
        if now >= next_kill:
            pid = stack.owned_triton_pid()
            t_kill = time.monotonic()
            os.kill(pid, signal.SIGKILL)
            while _readyz(stack):  # the gateway's probe notices
                time.sleep(0.05)
            t_down = time.monotonic()
            while not _readyz(stack):
                time.sleep(0.2)
            kills.append({"at_s": round(t_kill - t0, 1), "pid": pid, "t_kill": t_kill, "t_ready": time.monotonic(),
                          "not_ready_after_s": round(t_down - t_kill, 2),
                          "ready_again_after_s": round(time.monotonic() - t_kill, 1)})
            log(f"  kill {len(kills)}: {kills[-1]}")
            next_kill += every_s
        if now >= next_sample:
            _, g = tree_usage(stack.gateway.pid)
            samples.append({"t_s": round(now - t0), "gateway_rss_mb": round(g / 2**20, 1),
                            "gateway_streams": gateway_active_streams(stack), "streams_done": len(load.records),
                            "errors": sum(1 for r in load.records if r.error)})
            next_sample += sample_s
        time.sleep(0.05)
    records = load.stop()
    for k in kills:
        hit = _window(records, k["t_kill"], k["t_kill"])
        k["streams_hit"] = len(hit)
        k["hit_errors"] = sum(1 for r in hit if r.error)
        k["hit_codes"] = sorted({_code(r) for r in hit if r.error})
    windows = [(k["t_kill"], k["t_ready"] + window_s) for k in kills]
    inside = [r for r in records if r.error and any(r.t_start <= b and r.t_end >= a for a, b in windows)]
    outside = [r for r in records if r.error and not any(r.t_start <= b and r.t_end >= a for a, b in windows)]
    s = summary(records)
    for k in kills:
        k.pop("t_kill"), k.pop("t_ready")
    slope = rss_slope(samples, "gateway_rss_mb", skip_s=60.0) or 0.0  # after the first minute
    return {"scenario": "supervised_triton", "minutes": minutes, "callers": n, "kill_every_s": every_s, **s,
            "kills": kills, "refused_while_not_ready": len(inside) - sum(k["hit_errors"] for k in kills),
            "errors_outside_kill_windows": len(outside),
            "outside_codes": sorted({_code(r) for r in outside}), "gateway_rss_slope_mb_per_hour": round(slope, 1),
            "samples": samples,
            "ok": len(outside) == 0 and len(kills) == int((minutes * 60 - 1e-6) // every_s) and all(
                k["ready_again_after_s"] < 60 for k in kills)}


SCENARIOS = {"triton_restart": triton_restart, "gateway_restart": gateway_restart, "gateway_crash": gateway_crash,
             "adapter_publish": adapter_publish, "slow_client": slow_client}
LONG_SCENARIOS = {"supervised_triton": supervised_triton}  # run only when named (30 minutes)


def triton_live_sequences(stack: Stack) -> float | None:
    from prometheus_client.parser import text_string_to_metric_families

    try:
        text = urllib.request.urlopen(stack.triton.metrics_url, timeout=10).read().decode()
    except OSError:
        return None
    for f in text_string_to_metric_families(text):
        if f.name == "brogue_asr_live_sequences":
            return sum(s.value for s in f.samples)
    return None


def gateway_active_streams(stack: Stack) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(stack.metrics_url, timeout=10).read().decode()
    return sum(s.value for f in text_string_to_metric_families(text) if f.name == "brogue_active_streams"
               for s in f.samples)
