"""The OpenAI-compatible routes (docs/openai.md): ``POST /v1/audio/transcriptions``, ``GET /v1/models``.

A transcription request goes: key (401) -> a Triton instance ready (503) -> a stream slot of the
tenant (429; the upload holds it from here on, so a tenant's uploads in flight are bounded by its
``max_streams``) -> the multipart body, the file spooled to disk as it arrives (413 past the
limit) -> the fields (404 unknown model; 400 bad language, format, granularity, prompt) -> the
file opened as audio (400) -> :meth:`Gateway.run_stream` on its blocks, as fast as the engine takes
them -> the finals, rendered (:mod:`.formats`), or sent as Server-Sent Events while they arrive.

``model``: ``base`` (no adapter), the tenant's adapter (``NAME`` or ``NAME@VERSION``), or
``whisper-1``, the tenant's default (its adapter, or base), so unmodified apps work. For a tenant
on a model version of the model store (a full fine-tune), ``base`` and that version's
``NAME@VERSION`` both mean the version without an adapter. ``prompt``:
boost phrases (:func:`brogue.boosting.phrases_from_prompt`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from brogue.boosting import BoostError, phrases_from_prompt
from brogue.errors import ErrorCode

from ..gateway import Gateway, StreamError
from ..session import SessionConfig
from ..tenants import Tenant
from .formats import FORMATS, GRANULARITIES, LANGUAGE_NAMES, TextDeltas, render, segments_of
from .audio_file import AudioFile
from .errors import ApiError
from .http11 import BadBody, HttpConnection
from .upload import MB, Form, FormParser, UploadLimits, boundary_of

log = logging.getLogger(__name__)

__all__ = ["OpenAIApi", "Params", "served_languages"]

API = "openai"  # the `api` label of the gateway's metrics
WHISPER_ALIAS = "whisper-1"
BASE = "base"
FIELDS = {"file", "model", "language", "prompt", "response_format", "timestamp_granularities[]", "stream",
          "temperature"}  # others (newer OpenAI fields: include[], chunking_strategy, ...) are ignored


def served_languages(meta) -> tuple[str, ...]:
    """ISO 639-1 codes of the languages the model transcribes: model.json's ``language`` or
    ``languages`` if it has one, else English (the demo model, and NeMo's English checkpoints)."""
    raw = meta.raw.get("languages", meta.raw.get("language"))
    if isinstance(raw, str) and raw:
        raw = [raw]
    if isinstance(raw, list) and raw and all(isinstance(x, str) for x in raw):
        return tuple(x.split("-")[0].split("_")[0].lower() for x in raw)
    return ("en",)


@dataclass(frozen=True)
class Params:
    """The request's fields, checked."""

    adapter: str  # "" = base model; the adapter the stream decodes with
    language: str
    response_format: str
    granularities: tuple[str, ...]
    stream: bool
    boost: tuple


def _bool(value: str | None, name: str) -> bool:
    if value is None or value.strip().lower() in ("", "false", "0", "no"):
        return False
    if value.strip().lower() in ("true", "1", "yes"):
        return True
    raise ApiError(ErrorCode.BAD_REQUEST, f"{name} must be true or false, not {value[:20]!r}", param=name)


class OpenAIApi:
    """``await api(conn)`` serves one HTTP exchange (:class:`~.http11.HttpConnection`)."""

    def __init__(self, gateway: Gateway, limits: UploadLimits = UploadLimits()):
        self.gateway, self.limits = gateway, limits
        self.languages = served_languages(gateway.meta)

    # -- routing ---------------------------------------------------------------------------------

    async def __call__(self, conn: HttpConnection) -> None:
        req = conn.request
        try:
            try:
                await self._route(conn)
            except StreamError as e:
                raise ApiError.from_stream_error(e) from None
            except BoostError as e:
                raise ApiError(ErrorCode.BAD_REQUEST, str(e), param="prompt") from None
            except BadBody as e:
                raise ApiError(ErrorCode.BAD_REQUEST, f"malformed request body: {e}") from None
            except asyncio.TimeoutError:
                raise ApiError(ErrorCode.IDLE, f"no request body bytes for {self.limits.idle_seconds:g} s") from None
        except ApiError as e:
            log.info("openai %s %s: %d %s: %s", req.method, req.path, e.status, e.code, e)
            self.gateway.metrics.errors.labels(e.code, API).inc()
            if conn.response_started:
                return  # a stream's error went out as an event (see _sse)
            await conn.respond(e.status, e.headers(), e.encode())

    async def _route(self, conn: HttpConnection) -> None:
        req = conn.request
        path = req.path
        if path == "/v1/audio/transcriptions":
            self._method(req, "POST")
            await self.transcribe(conn)
        elif path == "/v1/models":
            self._method(req, "GET")
            await self._json(conn, self.models(self._tenant(req)))
        elif path.startswith("/v1/models/"):
            self._method(req, "GET")
            await self._json(conn, self.model(self._tenant(req), path[len("/v1/models/"):]))
        elif path.startswith("/v1/audio/"):
            raise ApiError(ErrorCode.NOT_FOUND, f"{path} is not served; Brogue serves /v1/audio/transcriptions")
        else:  # the WebSocket layer's paths, with another method than GET
            raise ApiError(ErrorCode.BAD_REQUEST, f"{req.method} is not allowed on {path}", status=405,
                           headers=(("Allow", "GET"),))

    @staticmethod
    def _method(req, method: str) -> None:
        if req.method != method:
            raise ApiError(ErrorCode.BAD_REQUEST, f"{req.method} is not allowed on {req.path}; use {method}",
                           status=405, headers=(("Allow", method),))

    def _tenant(self, req) -> Tenant:
        auth = req.header("authorization", "")
        key = auth[7:].strip() if auth.lower().startswith("bearer ") else req.header("x-api-key")
        return self.gateway.authenticate(key)  # StreamError(unauthenticated): 401

    async def _json(self, conn: HttpConnection, body: dict) -> None:
        await conn.respond(200, [("Content-Type", "application/json")], json.dumps(body).encode())

    # -- models ----------------------------------------------------------------------------------

    def _created(self, adapter: str, tenant: Tenant | None = None) -> int:
        if not adapter:
            root = self.gateway.meta.root
            if tenant is not None and tenant.model:
                with contextlib.suppress(ValueError):  # ModelError: a missing version is refused when used
                    root = self.gateway.models.describe(tenant.model).meta.root
            return int((root / "model.json").stat().st_mtime)
        name, _, version = adapter.partition("@")
        try:
            manifest = json.loads((Path(self.gateway.config.store_dir) / name / version / "manifest.json").read_text())
            from datetime import datetime

            return int(datetime.fromisoformat(manifest["created_at"]).timestamp())
        except (OSError, ValueError, KeyError, TypeError):
            return 0

    def model_ids(self, tenant: Tenant) -> dict[str, str]:
        """The models ``tenant`` may name, each with the adapter it decodes with (``""``: base).
        The adapter's bare name is accepted too (:meth:`resolve_model`) but not listed."""
        ids = {WHISPER_ALIAS: tenant.adapter, BASE: ""}
        if tenant.model:  # the tenant's own model version, without its adapter
            ids[tenant.model] = ""
        if tenant.adapter:
            ids[tenant.adapter] = tenant.adapter
        return ids

    def resolve_model(self, tenant: Tenant, model: str | None) -> str:
        """The adapter a request's ``model`` decodes with; ApiError 404 if the tenant may not use it."""
        if model is None or not model.strip():
            raise ApiError(ErrorCode.BAD_REQUEST, "model is required: 'base', your adapter, or 'whisper-1'",
                           param="model")
        model = model.strip()
        ids = self.model_ids(tenant)
        if model in ids:
            return ids[model]
        if tenant.adapter and model == tenant.adapter.partition("@")[0]:
            return tenant.adapter
        raise ApiError(ErrorCode.NOT_FOUND, f"the model {model!r} does not exist or you do not have access to it; "
                                            f"use one of {', '.join(ids)}", param="model")

    def _model_object(self, tenant: Tenant, model_id: str, adapter: str) -> dict:
        owner = "brogue" if not adapter or model_id == WHISPER_ALIAS else f"tenant:{tenant.name}"
        return {"id": model_id, "object": "model", "created": self._created(adapter, tenant), "owned_by": owner}

    def models(self, tenant: Tenant) -> dict:
        return {"object": "list", "data": [self._model_object(tenant, m, a) for m, a in self.model_ids(tenant).items()]}

    def model(self, tenant: Tenant, model_id: str) -> dict:
        adapter = self.resolve_model(tenant, model_id)
        return self._model_object(tenant, model_id, adapter)

    # -- transcriptions --------------------------------------------------------------------------

    def params(self, tenant: Tenant, form: Form, *, partial: bool = False) -> Params | None:
        """The request's fields, checked (ApiError names the bad one). ``partial``: only the fields
        present so far are checked (the file part has started; the others may follow it)."""
        f = form.get
        if not partial or f("model") is not None:
            adapter = self.resolve_model(tenant, f("model"))
        language = (f("language") or "").strip()
        if language:
            code = language.replace("_", "-").split("-")[0].lower()
            code = next((c for c, n in LANGUAGE_NAMES.items() if n == code), code)  # "english"
            if code not in self.languages:
                names = ", ".join(f"{c} ({LANGUAGE_NAMES.get(c, c)})" for c in self.languages)
                raise ApiError(ErrorCode.BAD_REQUEST, f"language {language[:20]!r} is not served: this model "
                                                      f"transcribes {names}", param="language")
        else:
            code = self.languages[0]
        fmt = (f("response_format") or "json").strip()
        if fmt not in FORMATS:
            raise ApiError(ErrorCode.BAD_REQUEST, f"response_format must be one of {', '.join(FORMATS)}, "
                                                  f"not {fmt[:30]!r}", param="response_format")
        grans = tuple(g.strip() for g in form.fields.get("timestamp_granularities[]", []) if g.strip())
        bad = [g for g in grans if g not in GRANULARITIES]
        if bad:
            raise ApiError(ErrorCode.BAD_REQUEST, f"timestamp_granularities[] takes word and/or segment, not "
                                                  f"{bad[0][:30]!r}", param="timestamp_granularities[]")
        if grans and fmt != "verbose_json" and (not partial or f("response_format") is not None):
            raise ApiError(ErrorCode.BAD_REQUEST, "timestamp_granularities[] needs response_format verbose_json",
                           param="timestamp_granularities[]")
        stream = _bool(f("stream"), "stream")
        if stream and fmt not in ("json", "text") and (not partial or f("response_format") is not None):
            raise ApiError(ErrorCode.BAD_REQUEST, "stream=true sends text events: response_format must be json or "
                                                  f"text, not {fmt}", param="stream")
        boost = phrases_from_prompt(f("prompt") or "")  # BoostError: 400
        try:  # what the gateway would refuse at the stream's start, refused before the upload
            self.gateway.check_phrases(boost)
        except ValueError as e:  # PhraseError
            raise ApiError(ErrorCode.BAD_REQUEST, f"prompt: {e}", param="prompt") from None
        if partial:
            return None
        return Params(adapter, code, fmt, grans, stream, boost)

    async def transcribe(self, conn: HttpConnection) -> None:
        req = conn.request
        tenant = self._tenant(req)
        if self.gateway.stopping.done():
            raise ApiError(ErrorCode.UNAVAILABLE, "the gateway is shutting down; try again")
        self.gateway.require_ready()  # 503 before any upload
        boundary = boundary_of(req.header("content-type"))
        length = req.header("content-length")
        if length is not None and length.strip().isdigit() and int(length) > self.limits.max_body_bytes:
            raise ApiError(ErrorCode.TOO_LARGE, f"the request is {int(length) / MB:g} MB; the gateway's upload limit "
                                                f"is {self.limits.max_file_bytes / MB:g} MB", param="file")
        lease = self.gateway.open_lease(tenant)  # 429 before any upload
        try:
            tenant = lease.tenant
            form = await self._receive_form(conn, boundary, tenant)
            with form:
                if form.file is None:
                    raise ApiError(ErrorCode.BAD_REQUEST, "the 'file' field is required (the audio, as a file part)",
                                   param="file")
                params = self.params(tenant, form)
                audio = await asyncio.to_thread(AudioFile, form.file, form.filename)  # may scan an MP3
                try:
                    await self._run(conn, tenant, lease, params, audio)
                finally:
                    audio.close()
        finally:
            lease.release()  # run_stream releases it too; this covers failures before it ran

    async def _receive_form(self, conn: HttpConnection, boundary: bytes, tenant: Tenant) -> Form:
        parser = FormParser(boundary, self.limits, on_file=lambda form: self.params(tenant, form, partial=True))
        try:
            while (data := await conn.receive(self.limits.idle_seconds)) is not None:
                parser.feed(data)
        except BaseException:
            parser.form.close()
            raise
        return parser.finish()

    async def _run(self, conn: HttpConnection, tenant: Tenant, lease, params: Params, audio: AudioFile) -> None:
        if audio.duration > tenant.max_stream_seconds:
            raise ApiError(ErrorCode.TOO_LARGE, f"the audio is {audio.duration:.0f} s long; tenant {tenant.name}'s "
                                                f"limit is {tenant.max_stream_seconds:g} s per request", param="file")
        rate = self.gateway.meta.sample_rate
        config = SessionConfig(sample_rate=rate, encoding="float32", interim_results=params.stream,
                               boost=params.boost)
        t0 = time.monotonic()
        stream = self.gateway.run_stream(tenant, config, audio.blocks(rate), api=API, lease=lease,
                                         adapter=params.adapter)
        async with contextlib.aclosing(stream) as results:
            if params.stream:
                await self._sse(conn, results)
            else:
                finals = [ev async for ev in results if ev.kind == "final"]
                segments = segments_of(finals)
                ctype, body = render(params.response_format, segments, duration=audio.duration,
                                     language=params.language, granularities=params.granularities)
                await conn.respond(200, [("Content-Type", ctype)], body)
        log.info("openai transcription for tenant %s: %.1f s of audio in %.1f s", tenant.name, audio.duration,
                 time.monotonic() - t0)

    async def _sse(self, conn: HttpConnection, results) -> None:
        """Server-Sent Events: ``transcript.text.delta`` as text is done, then ``transcript.text.done``.
        An error after the response started is an ``{"error": ...}`` event (the client raises it)."""
        await conn.start(200, [("Content-Type", "text/event-stream; charset=utf-8"), ("Cache-Control", "no-cache"),
                               ("X-Accel-Buffering", "no")])
        deltas = TextDeltas(early=True)

        async def event(obj: dict) -> None:
            await conn.send(f"data: {json.dumps(obj)}\n\n".encode())

        try:
            async for ev in results:
                delta = deltas.feed(ev)
                if delta:
                    await event({"type": "transcript.text.delta", "delta": delta})
        except StreamError as e:
            err = ApiError.from_stream_error(e)
            await event(err.body())
            await conn.end()
            raise err from None
        except BoostError as e:
            err = ApiError(ErrorCode.BAD_REQUEST, str(e), param="prompt")
            await event(err.body())
            await conn.end()
            raise err from None
        await event({"type": "transcript.text.done", "text": deltas.text})
        await conn.end()
