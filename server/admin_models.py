"""The admin API's model calls: publish (upload and rollout), assign, pin and list model versions.

:class:`ModelAdmin` holds the logic; :class:`~brogue.server.admin.AdminService` maps it to gRPC. Every
check runs before anything that serves changes: a refused publish leaves no entry in the store and
no tenant moved, a refused assignment leaves the tenants file as it was. Failures are
:class:`AdminError` with the gRPC status to answer with.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
from collections.abc import AsyncIterator

from brogue.adapters import AdapterError, AdapterRef, BaseSpec
from brogue.adapters.store import AdapterStore
from brogue.engine.metadata import ModelMeta
from brogue.engine.phrases import PhraseTokenizer
from brogue.models import ModelError, ModelManifest, ModelRef, NoRoom
from brogue.models.manifest import FileSpec

from .model_fleet import ModelLoadError, ServedModel
from .protos import brogue_admin_pb2 as pb
from .triton_client import TritonUnavailable

log = logging.getLogger(__name__)

MAX_CHUNK_BYTES = 8 << 20


class AdminError(Exception):
    """A refused admin call: ``status`` (a grpc.StatusCode name), ``kind`` (the error metric's
    label) and the message."""

    def __init__(self, status: str, kind: str, message: str):
        super().__init__(message)
        self.status, self.kind = status, kind


def base_spec(meta: ModelMeta) -> BaseSpec:
    """What an adapter must match to run on the model of ``meta``."""
    return BaseSpec(meta.fingerprint, meta.n_layers, meta.d_model, meta.max_adapter_dim)


def _model_error(e: ModelError) -> AdminError:
    status = {"missing": "NOT_FOUND", "exists": "ALREADY_EXISTS", "too_big": "RESOURCE_EXHAUSTED",
              "wrong_base": "FAILED_PRECONDITION", "vocabulary": "FAILED_PRECONDITION"}.get(e.code, "INVALID_ARGUMENT")
    return AdminError(status, "model", f"{e.code}: {e}")


@contextlib.contextmanager
def _refusals():
    """Map what the model checks raise to :class:`AdminError` (the rest passes through)."""
    try:
        yield
    except ModelError as e:
        raise _model_error(e) from None
    except NoRoom as e:
        raise AdminError("RESOURCE_EXHAUSTED", "model", f"too_big: {e}") from None
    except ValueError as e:
        raise AdminError("INVALID_ARGUMENT", "bad_request", str(e)) from None


class ModelAdmin:
    def __init__(self, gateway):
        self.gateway = gateway
        self.fleet = gateway.models
        self.adapters = AdapterStore(gateway.config.store_dir)
        self._lock = asyncio.Lock()  # publishes and assignments, one at a time

    # -- checks shared by publish and assign -----------------------------------------------------

    def _check_tenant_fits(self, tenant, meta: ModelMeta, adapter: str, phrases: PhraseTokenizer) -> None:
        """``ModelError`` unless ``tenant``'s ``adapter`` was trained on the model of ``meta`` and its
        boost phrases can be written with that model's vocabulary."""
        if adapter:
            try:
                self.adapters.load(AdapterRef.parse(adapter), base_spec(meta))
            except AdapterError as e:
                raise ModelError("wrong_base" if e.code == "wrong_base" else "missing",
                                 f"tenant {tenant.name}: adapter {adapter}: {e}") from None
        for p in tenant.boost:
            try:
                phrases.encode(p.text)
            except ValueError as e:
                raise ModelError("vocabulary", f"tenant {tenant.name}: boost phrase {p.text!r}: {e}") from None

    async def _load(self, key: str) -> ServedModel:
        try:
            return await self.fleet.prepare(key)
        except NoRoom as e:
            raise AdminError("RESOURCE_EXHAUSTED", "model", f"too_big: {e}") from None
        except (ModelLoadError, TritonUnavailable) as e:
            raise AdminError("FAILED_PRECONDITION", "model", f"load_failed: {e}") from None

    # -- calls -----------------------------------------------------------------------------------

    async def publish(self, chunks: AsyncIterator) -> tuple[ModelManifest, list[str]]:
        """Store the upload of ``chunks`` (``PublishModelChunk``\\ s), then roll it out if asked."""
        first = await anext(chunks, None)
        if first is None or not first.HasField("header"):
            raise AdminError("INVALID_ARGUMENT", "bad_request", "the first message must carry the header")
        h = first.header
        try:
            ref = ModelRef(h.name, h.version)
            source = json.loads(h.source_json) if h.source_json else {}
            if not isinstance(source, dict):
                raise ValueError("source_json must be a JSON object")
        except ValueError as e:
            raise AdminError("INVALID_ARGUMENT", "bad_request", str(e)) from None
        files = {f.path: FileSpec(f.size_bytes, f.sha256) for f in h.files}
        if len(files) != len(h.files):
            raise AdminError("INVALID_ARGUMENT", "bad_request", "a file is declared twice")
        store = self.fleet.store
        store.root.mkdir(parents=True, exist_ok=True)
        need, free = sum(f.size_bytes for f in files.values()), shutil.disk_usage(store.root).free
        if need > free:
            raise AdminError("RESOURCE_EXHAUSTED", "model", f"too_big: model {ref} is {need >> 20} MiB; the store "
                                                            f"has {free >> 20} MiB free")
        async with self._lock:
            try:
                staging = store.stage(ref, files)
            except ModelError as e:
                raise _model_error(e) from None
            with staging, _refusals():
                try:
                    async for c in chunks:
                        if c.HasField("header"):
                            raise ModelError("manifest", "the header may come only in the first message")
                        if len(c.data) > MAX_CHUNK_BYTES:
                            raise ModelError("incomplete", f"a chunk of {len(c.data)} bytes; at most {MAX_CHUNK_BYTES}")
                        await asyncio.to_thread(staging.write, c.path, c.offset, c.data)
                    await asyncio.to_thread(staging.verify)
                    self.fleet.check_fits(str(ref), self.fleet.footprint_of(staging.dir))
                    moves = self._rollout_plan(ref, staging.dir) if h.rollout else {}
                    manifest = await asyncio.to_thread(
                        staging.commit, kind=h.kind or "full", description=h.description,
                        parent_fingerprint=h.parent_fingerprint, source=source)
                except (ModelError, NoRoom) as e:
                    log.info("admin PublishModel %s refused: %s", ref, e)
                    raise
            log.info("admin PublishModel: stored %s (%d MiB, fingerprint %s)", ref, manifest.size_bytes >> 20,
                     manifest.fingerprint[:19])
            if not moves:
                return manifest, []
            try:
                await self._load(str(ref))
            except AdminError as e:
                raise AdminError(e.status, e.kind, f"{ref} is stored, but no tenant moved: {e}") from None
            self.gateway.tenants.set_model(moves)
            log.info("admin PublishModel: rolled out %s to %s (open streams finish on their version)", ref,
                     ", ".join(sorted(moves)))
            return manifest, sorted(moves)

    def _rollout_plan(self, ref: ModelRef, folder) -> dict[str, tuple[str, str]]:
        """``{tenant: (new model, adapter)}`` for the tenants on another version of ``ref.name``;
        ``ModelError`` naming every tenant the new version does not fit."""
        tenants = [t for t in self.gateway.tenants.tenants().values()
                   if t.model and ModelRef.parse(t.model).name == ref.name and t.model != str(ref)]
        if not tenants:
            return {}
        meta = ModelMeta.load(folder)
        phrases = PhraseTokenizer.for_model(meta, folder)
        problems = []
        for t in tenants:
            try:
                self._check_tenant_fits(t, meta, t.adapter, phrases)
            except ModelError as e:
                problems.append((e.code, str(e)))
        if problems:
            raise ModelError(problems[0][0], f"rollout of {ref} refused, nothing stored: " +
                             "; ".join(p[1] for p in problems))
        return {t.name: (str(ref), t.adapter) for t in tenants}

    async def assign(self, tenant_name: str, model: str, adapter: str):
        tenants = self.gateway.tenants.tenants()
        if tenant_name not in tenants:
            raise AdminError("NOT_FOUND", "bad_request", f"no tenant {tenant_name!r}")
        tenant = tenants[tenant_name]
        async with self._lock:
            with _refusals():
                if model:
                    model = str(ModelRef.parse(model))
                if adapter:
                    adapter = str(AdapterRef.parse(adapter))
                m = self.fleet.describe(model)
                self._check_tenant_fits(tenant, m.meta, adapter, m.phrases())
                self.fleet.check_fits(m.label, m.footprint)
            if model:
                await self._load(model)
            try:
                updated = self.gateway.tenants.set_model({tenant_name: (model, adapter)})[tenant_name]
            except (ValueError, OSError) as e:
                raise AdminError("FAILED_PRECONDITION", "internal", f"could not rewrite the tenants file: {e}") from None
        log.info("admin AssignModel: tenant %s -> %s, adapter %s (new streams)", tenant_name, model or "base model",
                 adapter or "none")
        return updated

    async def pin(self, model: str, pinned: bool) -> pb.Model:
        with _refusals():
            ref = ModelRef.parse(model)
            m = self.fleet.describe(str(ref))
            if pinned:
                self.fleet.check_fits(m.label, m.footprint)
        now = set(self.gateway.tenants.pinned_models())
        now = now | {str(ref)} if pinned else now - {str(ref)}
        try:
            self.gateway.tenants.set_pinned(now)
        except (ValueError, OSError) as e:
            raise AdminError("FAILED_PRECONDITION", "internal", f"could not rewrite the tenants file: {e}") from None
        if pinned:
            await self._load(str(ref))
        log.info("admin PinModel: %s %s", ref, "pinned" if pinned else "unpinned")
        return self.message(m)

    def list(self) -> list[pb.Model]:
        out = [self.message(self.fleet.base)]
        for entry in self.fleet.store.list():
            if entry.error is not None:
                out.append(pb.Model(ref=str(entry.ref), name=entry.ref.name, version=entry.ref.version,
                                    error=str(entry.error), error_code=entry.error.code))
                continue
            try:
                out.append(self.message(self.fleet.describe(str(entry.ref)), entry.manifest))
            except ModelError as e:
                out.append(pb.Model(ref=str(entry.ref), name=entry.ref.name, version=entry.ref.version,
                                    error=str(e), error_code=e.code))
        return out

    def message(self, m: ServedModel, manifest: ModelManifest | None = None) -> pb.Model:
        if manifest is None and m.key:
            manifest = self.fleet.store.read(m.ref)
        users = [t.name for t in self.gateway.tenants.tenants().values() if t.model == m.key]
        msg = pb.Model(ref=m.key, fingerprint=m.fingerprint, serving_bytes=m.footprint.total,
                       instances_loaded=len(self.fleet.ready_urls(m)), live_streams=m.live,
                       pinned=not m.key or m.key in self.gateway.tenants.pinned_models(), tenants=sorted(users),
                       base=not m.key, name=m.meta.raw.get("name", ""))
        if manifest is not None:
            msg.name, msg.version, msg.kind, msg.description = (manifest.name, manifest.version, manifest.kind,
                                                                manifest.description)
            msg.parent_fingerprint, msg.created_at = manifest.parent_fingerprint, manifest.created_at
            msg.size_bytes = manifest.size_bytes
        return msg

    def spec_for(self, tenant_model: str) -> BaseSpec:
        """The :class:`BaseSpec` adapters of a tenant on ``tenant_model`` must match."""
        return base_spec(self.fleet.describe(tenant_model).meta)

    def spec_by_fingerprint(self) -> dict[str, BaseSpec]:
        """Every servable model's :class:`BaseSpec`, by fingerprint (to list adapters of any model)."""
        specs = {self.fleet.base.fingerprint: base_spec(self.fleet.base.meta)}
        for entry in self.fleet.store.list():
            if entry.manifest is not None:
                try:
                    meta = self.fleet.describe(str(entry.ref)).meta
                except ModelError:
                    continue
                specs[meta.fingerprint] = base_spec(meta)
        return specs
