"""The admin gRPC service (``brogue.admin.v1.Admin``, server/protos/brogue_admin.proto).

It runs on the gateway's admin port, bound to loopback unless configured otherwise, and every call
needs the admin token in its metadata (``x-admin-token: TOKEN`` or ``authorization: Bearer TOKEN``),
checked against the tenants file's ``admin_token_sha256``. Calls:

- ``PublishAdapter``: validate an ``adapter.safetensors`` against the served base model (fingerprint,
  layers, width, the bank's max dim, finite float32 tensors) and write it as a new, immutable store
  entry. A bad adapter changes nothing and gets INVALID_ARGUMENT with the validation message; an
  existing ``name@version`` gets ALREADY_EXISTS.
- ``AssignAdapter``: point a tenant at a store entry (checked to exist and validate first) or at the
  base model, by rewriting the tenants file. Open streams keep the adapter they started with; new
  streams get the new one. Tenants never name adapters in their requests: only this call, with
  the admin token, decides which adapter a tenant's streams use.
- ``ListTenants``, ``ListAdapters``.
- ``PublishModel``, ``AssignModel``, ``PinModel``, ``ListModels``: model versions served beside the
  base (:mod:`brogue.server.admin_models`).

Adapters belong to one model, by fingerprint: an adapter is published for the deployment's base or
for a store version (``model``), and validated against the model of the tenant it is assigned to.

Neither tokens nor API keys are ever logged; the log names the call, the tenant and the reference.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import tempfile
from pathlib import Path

import grpc

from brogue.adapters import AdapterError, AdapterRef, BaseSpec
from brogue.adapters.store import AdapterStore
from brogue.boosting import DEFAULT_BOOST, validate

from .admin_models import AdminError, ModelAdmin, base_spec
from .protos import brogue_admin_pb2 as pb
from .protos import brogue_admin_pb2_grpc as pb_grpc
from .tenants import AuthError

log = logging.getLogger(__name__)

MAX_ADAPTER_BYTES = 256 << 20
MAX_LM_TEXT_BYTES = 16 << 20


def admin_token_of(metadata) -> str | None:
    """The admin token from gRPC invocation metadata (``x-admin-token`` or ``authorization: Bearer``)."""
    for key, value in metadata or ():
        key = key.lower()
        if isinstance(value, bytes):
            continue
        if key == "x-admin-token":
            return value.strip()
        if key == "authorization" and value.lower().startswith("bearer "):
            return value[7:].strip()
    return None


def adapter_message(manifest=None, ref: AdapterRef | None = None, error: AdapterError | None = None,
                    tenants=()) -> pb.Adapter:
    msg = pb.Adapter(tenants=sorted(tenants))
    if manifest is not None:
        msg.ref = str(manifest.ref)
        msg.name, msg.version, msg.kind, msg.description = (manifest.name, manifest.version, manifest.kind,
                                                            manifest.description)
        msg.dim, msg.n_layers, msg.d_model = manifest.dim, manifest.n_layers, manifest.d_model
        msg.sha256, msg.size_bytes = manifest.sha256, manifest.size_bytes
        msg.base_fingerprint, msg.created_at = manifest.base_fingerprint, manifest.created_at
        msg.domain_lm_sentences = manifest.lm.get("sentences", 0) if manifest.lm else 0
    if ref is not None:
        msg.ref, msg.name, msg.version = str(ref), ref.name, ref.version
    if error is not None:
        msg.error, msg.error_code = str(error), error.code
    return msg


class AdminService(pb_grpc.AdminServicer):
    def __init__(self, gateway):
        self.gateway = gateway
        self.store = AdapterStore(gateway.config.store_dir)
        self.base = base_spec(gateway.meta)
        self.models = ModelAdmin(gateway)
        self._publish_lock = asyncio.Lock()

    async def _authorize(self, context: grpc.aio.ServicerContext, call: str) -> None:
        try:
            self.gateway.tenants.check_admin(admin_token_of(context.invocation_metadata()))
        except AuthError as e:
            log.warning("admin %s refused: %s (peer %s)", call, e, context.peer())
            self.gateway.metrics.errors.labels("unauthenticated", "admin").inc()
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, str(e))

    async def _abort(self, context, code: grpc.StatusCode, kind: str, message: str):
        self.gateway.metrics.errors.labels(kind, "admin").inc()
        log.info("admin call refused (%s): %s", code.name, message)
        await context.abort(code, message)

    # -- calls -----------------------------------------------------------------------------------

    async def PublishAdapter(self, request: pb.PublishAdapterRequest, context) -> pb.Adapter:
        await self._authorize(context, "PublishAdapter")
        if not request.name:
            await self._abort(context, grpc.StatusCode.INVALID_ARGUMENT, "bad_request",
                              "publish needs a name")
        try:
            AdapterRef(request.name, request.version or "0")
        except ValueError as e:
            await self._abort(context, grpc.StatusCode.INVALID_ARGUMENT, "bad_request", str(e))
        if not request.safetensors:
            await self._abort(context, grpc.StatusCode.INVALID_ARGUMENT, "bad_request",
                              "no adapter.safetensors bytes in the request")
        if len(request.safetensors) > MAX_ADAPTER_BYTES:
            await self._abort(context, grpc.StatusCode.INVALID_ARGUMENT, "bad_request",
                              f"adapter file of {len(request.safetensors)} bytes exceeds {MAX_ADAPTER_BYTES}")
        if len(request.domain_lm_text.encode()) > MAX_LM_TEXT_BYTES:
            await self._abort(context, grpc.StatusCode.INVALID_ARGUMENT, "bad_request",
                              f"domain LM text over {MAX_LM_TEXT_BYTES} bytes")
        if request.domain_lm_text and not 0 <= request.domain_lm_weight < 1:
            await self._abort(context, grpc.StatusCode.INVALID_ARGUMENT, "bad_request",
                              f"domain_lm_weight must be in (0, 1) (0: 0.5), not {request.domain_lm_weight:g}")
        if request.domain_lm_text and not request.domain_lm_text.strip():
            await self._abort(context, grpc.StatusCode.INVALID_ARGUMENT, "bad_request",
                              "domain_lm_text holds no sentence")
        try:
            base = self.models.spec_for(request.model.strip())
        except ValueError as e:  # ModelError too: no such model version
            await self._abort(context, grpc.StatusCode.NOT_FOUND, "bad_request", f"model {request.model!r}: {e}")
        if request.base_fingerprint and request.base_fingerprint != base.fingerprint:
            await self._abort(context, grpc.StatusCode.INVALID_ARGUMENT, "adapter",
                              f"wrong_base: adapter {request.name} was trained on base model "
                              f"{request.base_fingerprint[:16]}, but model {request.model or 'base'} is "
                              f"{base.fingerprint[:16]}")
        source = {}
        if request.source_json:
            try:
                source = json.loads(request.source_json)
            except ValueError:
                source = None
            if not isinstance(source, dict):
                await self._abort(context, grpc.StatusCode.INVALID_ARGUMENT, "bad_request",
                                  "source_json must be a JSON object")
        async with self._publish_lock:
            try:
                manifest = await asyncio.to_thread(self._publish, request, source, base)
            except AdapterError as e:
                log.info("admin PublishAdapter %s refused: %s", request.name, e.code)
                await self._abort(context, grpc.StatusCode.INVALID_ARGUMENT, "adapter", f"{e.code}: {e}")
            except FileExistsError as e:
                await self._abort(context, grpc.StatusCode.ALREADY_EXISTS, "bad_request",
                                  f"{e}; publish a new version instead")
            except (ValueError, TypeError) as e:
                await self._abort(context, grpc.StatusCode.INVALID_ARGUMENT, "bad_request", str(e))
        log.info("admin PublishAdapter: stored %s (dim %d, sha256 %s)", manifest.ref, manifest.dim,
                 manifest.sha256[:12])
        return adapter_message(manifest)

    def _publish(self, request: pb.PublishAdapterRequest, source: dict, base: BaseSpec):
        # The store reads a local file: stage the bytes in a private temporary file (outside the store,
        # so a refused adapter leaves the store untouched).
        fd, tmp = tempfile.mkstemp(prefix="brogue-admin-", suffix=".safetensors")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(request.safetensors)
            lm = request.domain_lm_text.splitlines() if request.domain_lm_text else None
            return self.store.publish(Path(tmp), base=base, name=request.name,
                                      version=request.version or None, kind=request.kind,
                                      description=request.description, source=source, lm_sentences=lm,
                                      lm_weight=round(request.domain_lm_weight, 4) or 0.5)
        except AdapterError as e:  # name the upload in the message, not the temporary file
            message = str(e).replace(tmp, f"the adapter.safetensors of {request.name}")
            raise AdapterError(e.code, message) from None
        finally:
            os.unlink(tmp)

    async def AssignAdapter(self, request: pb.AssignAdapterRequest, context) -> pb.Tenant:
        await self._authorize(context, "AssignAdapter")
        tenants = self.gateway.tenants.tenants()
        if request.tenant not in tenants:
            await self._abort(context, grpc.StatusCode.NOT_FOUND, "bad_request",
                              f"no tenant {request.tenant!r}")
        adapter = request.adapter.strip()
        if adapter:
            try:
                ref = AdapterRef.parse(adapter)
            except ValueError as e:
                await self._abort(context, grpc.StatusCode.INVALID_ARGUMENT, "bad_request", str(e))
            try:  # an adapter of the tenant's own model (by fingerprint)
                base = self.models.spec_for(tenants[request.tenant].model)
            except ValueError as e:
                await self._abort(context, grpc.StatusCode.FAILED_PRECONDITION, "model", f"tenant's model: {e}")
            try:
                await asyncio.to_thread(self.store.load, ref, base)
            except AdapterError as e:
                missing = e.code == "missing"
                status = grpc.StatusCode.NOT_FOUND if missing else grpc.StatusCode.FAILED_PRECONDITION
                await self._abort(context, status, "adapter", f"{e.code}: {e}")
            adapter = str(ref)
        try:
            tenant = await asyncio.to_thread(self.gateway.tenants.set_adapter, request.tenant, adapter)
        except KeyError as e:
            await self._abort(context, grpc.StatusCode.NOT_FOUND, "bad_request", str(e.args[0]))
        except (ValueError, OSError) as e:
            await self._abort(context, grpc.StatusCode.FAILED_PRECONDITION, "internal",
                              f"could not rewrite the tenants file: {e}")
        log.info("admin AssignAdapter: tenant %s -> %s (new streams)", tenant.name,
                 tenant.adapter or "base model")
        return self._tenant_message(tenant)

    async def SetTenantBoost(self, request: pb.SetTenantBoostRequest, context) -> pb.Tenant:
        await self._authorize(context, "SetTenantBoost")
        if request.tenant not in self.gateway.tenants.tenants():
            await self._abort(context, grpc.StatusCode.NOT_FOUND, "bad_request", f"no tenant {request.tenant!r}")
        try:
            phrases = validate((p.phrase, p.boost or DEFAULT_BOOST) for p in request.phrases)
            tenant_model = self.gateway.models.describe(self.gateway.tenants.tenants()[request.tenant].model)
            self.gateway.check_phrases(phrases, tenant_model)  # the tenant's model must be able to write them
        except ValueError as e:  # BoostError, PhraseError
            await self._abort(context, grpc.StatusCode.INVALID_ARGUMENT, "bad_request", str(e))
        try:
            tenant = await asyncio.to_thread(self.gateway.tenants.set_boost, request.tenant, phrases)
        except (ValueError, OSError) as e:
            await self._abort(context, grpc.StatusCode.FAILED_PRECONDITION, "internal",
                              f"could not rewrite the tenants file: {e}")
        log.info("admin SetTenantBoost: tenant %s has %d boost phrase(s) (new streams)", tenant.name, len(phrases))
        return self._tenant_message(tenant)

    async def ListTenants(self, request, context) -> pb.ListTenantsResponse:
        await self._authorize(context, "ListTenants")
        tenants = self.gateway.tenants.tenants()
        return pb.ListTenantsResponse(tenants=[self._tenant_message(t) for _, t in sorted(tenants.items())])

    async def ListAdapters(self, request, context) -> pb.ListAdaptersResponse:
        await self._authorize(context, "ListAdapters")
        tenants = self.gateway.tenants.tenants()
        entries = await asyncio.to_thread(self._list)
        out = []
        for entry, manifest in entries:
            users = [t.name for t in tenants.values() if t.adapter == str(entry.ref)]
            out.append(adapter_message(manifest, entry.ref, entry.error, users))
        return pb.ListAdaptersResponse(adapters=out)

    def _list(self):
        """Entries validated against the model they were trained for (the base, or a store version
        with their fingerprint; else against the base, which reports ``wrong_base``); a failing
        entry keeps its manifest's fields when the manifest itself is readable."""
        specs = self.models.spec_by_fingerprint()
        out = []
        for quick in self.store.list():
            spec = specs.get(quick.manifest.base_fingerprint, self.base) if quick.manifest else self.base
            try:
                self.store.load(quick.ref, spec)
                out.append((quick, quick.manifest))
            except AdapterError as e:
                out.append((type(quick)(quick.ref, None, e), quick.manifest))
        return out

    def _tenant_message(self, t) -> pb.Tenant:
        live = self.gateway.tenants.live_streams().get(t.name, 0)
        return pb.Tenant(name=t.name, adapter=t.adapter, model=t.model, max_streams=t.max_streams,
                         max_stream_seconds=t.max_stream_seconds, live_streams=live,
                         api_keys=len(t.key_hashes),
                         boost=[pb.BoostPhrase(phrase=p.text, boost=p.boost) for p in t.boost])


    # -- model versions (brogue.server.admin_models) --------------------------------------------------

    async def _model_call(self, context, coro):
        try:
            return await coro
        except AdminError as e:
            await self._abort(context, getattr(grpc.StatusCode, e.status), e.kind, str(e))

    async def PublishModel(self, request_iterator, context) -> pb.PublishModelResponse:
        await self._authorize(context, "PublishModel")
        manifest, moved = await self._model_call(context, self.models.publish(request_iterator.__aiter__()))
        model = self.models.message(self.models.fleet.describe(str(manifest.ref)), manifest)
        return pb.PublishModelResponse(model=model, moved_tenants=moved)

    async def AssignModel(self, request: pb.AssignModelRequest, context) -> pb.Tenant:
        await self._authorize(context, "AssignModel")
        tenant = await self._model_call(context, self.models.assign(request.tenant, request.model.strip(),
                                                                    request.adapter.strip()))
        return self._tenant_message(tenant)

    async def PinModel(self, request: pb.PinModelRequest, context) -> pb.Model:
        await self._authorize(context, "PinModel")
        return await self._model_call(context, self.models.pin(request.model.strip(), request.pinned))

    async def ListModels(self, request, context) -> pb.ListModelsResponse:
        await self._authorize(context, "ListModels")
        budget = self.models.fleet.budget
        models = await asyncio.to_thread(self.models.list)
        return pb.ListModelsResponse(models=models, budget_bytes=budget.total if budget else 0)


def add_admin(gateway, server: grpc.aio.Server) -> AdminService:
    """Add the admin service to ``server`` (the gateway's admin port)."""
    service = AdminService(gateway)
    pb_grpc.add_AdminServicer_to_server(service, server)
    return service
