"""Client of the gateway's admin gRPC API (``brogue adapters ...`` and ``brogue models ...``).

The admin port listens on 127.0.0.1:50052 unless the gateway was started with another
``--admin-host``/``--admin-port``. The token comes from ``--token`` or ``BROGUE_ADMIN_TOKEN``; with
``--tls-ca`` the channel is TLS, verified against that CA (or certificate) file.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import grpc

from brogue.adapters import MANIFEST_FILE, TENSORS_FILE, read_adapter
from brogue.engine.lm import read_text
from brogue.server.protos import brogue_admin_pb2 as pb
from brogue.server.protos import brogue_admin_pb2_grpc as pb_grpc

DEFAULT_ADMIN = "127.0.0.1:50052"
TOKEN_ENV = "BROGUE_ADMIN_TOKEN"


class AdminClientError(RuntimeError):
    """A call failed; ``code`` is the gRPC status code's name (UNAUTHENTICATED, INVALID_ARGUMENT, ...)."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


@dataclass
class PushRequest:
    """What ``push`` sends: the tensor file's bytes and the manifest fields."""

    name: str
    version: str
    kind: str
    description: str
    safetensors: bytes
    base_fingerprint: str = ""
    source: dict | None = None
    domain_lm_text: str = ""  # the domain LM's sentences, one per line ("" = none)
    domain_lm_weight: float = 0.0  # 0 = the server's default, 0.5
    model: str = ""  # the model it was trained on ("" = the deployment's base)


def push_request(path: str | os.PathLike, *, name: str | None = None, version: str | None = None,
                 kind: str | None = None, description: str | None = None,
                 base_fingerprint: str | None = None, domain_lm: str | os.PathLike | None = None,
                 domain_lm_weight: float = 0.0, model: str = "") -> PushRequest:
    """Read a store entry directory or an ``adapter.safetensors`` file for :meth:`AdminClient.publish`.

    An entry directory is checked locally first (manifest, size, SHA-256, tensors; not the base
    model, which the server checks); its manifest supplies the defaults of every field, and its
    base fingerprint is sent so that the server refuses an adapter trained on another base model.
    A bare tensor file needs ``name``. An entry's domain LM goes along; ``domain_lm`` (a sentence
    file, ``.txt`` or ``.txt.gz``) gives one, or replaces the entry's, mixed in at ``domain_lm_weight``.
    ``model``: the model version it was trained on ("" = the deployment's base).
    """
    path = Path(path)
    lm_text, lm_weight = "", domain_lm_weight
    if domain_lm is not None:
        lm_text = "\n".join(read_text(domain_lm))
        if not lm_text:
            raise ValueError(f"{domain_lm}: no sentences")
    if path.is_dir():
        weights = read_adapter(path, None)  # AdapterError for a damaged entry
        m = weights.manifest
        if not lm_text and weights.lm_path is not None:
            lm_text, lm_weight = "\n".join(read_text(weights.lm_path)), lm_weight or m.lm["weight"]
        return PushRequest(name or m.name, version if version is not None else m.version,
                           kind if kind is not None else m.kind,
                           description if description is not None else m.description,
                           (path / TENSORS_FILE).read_bytes(), base_fingerprint or m.base_fingerprint,
                           m.source, lm_text, lm_weight, model)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such adapter file or store entry directory")
    if not name:
        raise ValueError(f"{path}: a bare tensor file needs --name (an entry folder has a {MANIFEST_FILE})")
    return PushRequest(name, version or "", kind or "", description or "", path.read_bytes(),
                       base_fingerprint or "", None, lm_text, lm_weight, model)


class AdminClient:
    def __init__(self, address: str = DEFAULT_ADMIN, token: str | None = None,
                 tls_ca: str | os.PathLike | None = None, timeout: float = 60.0,
                 server_name: str | None = None):
        token = token if token is not None else os.environ.get(TOKEN_ENV)
        if not token:
            raise ValueError(f"no admin token: pass --token or set {TOKEN_ENV}")
        self._metadata = (("x-admin-token", token),)
        self.timeout = timeout
        options = [("grpc.max_send_message_length", 256 << 20), ("grpc.max_receive_message_length", 64 << 20)]
        if server_name:
            options.append(("grpc.ssl_target_name_override", server_name))
        if tls_ca:
            creds = grpc.ssl_channel_credentials(root_certificates=Path(tls_ca).read_bytes())
            self.channel = grpc.secure_channel(address, creds, options=options)
        else:
            self.channel = grpc.insecure_channel(address, options=options)
        self.stub = pb_grpc.AdminStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _call(self, method, request):
        try:
            return method(request, metadata=self._metadata, timeout=self.timeout)
        except grpc.RpcError as e:
            raise AdminClientError(e.code().name, e.details() or str(e)) from None

    def publish(self, req: PushRequest) -> pb.Adapter:
        return self._call(self.stub.PublishAdapter, pb.PublishAdapterRequest(
            name=req.name, version=req.version, kind=req.kind, description=req.description,
            safetensors=req.safetensors, base_fingerprint=req.base_fingerprint,
            source_json=json.dumps(req.source) if req.source else "",
            domain_lm_text=req.domain_lm_text, domain_lm_weight=req.domain_lm_weight, model=req.model))

    def assign(self, tenant: str, adapter: str) -> pb.Tenant:
        return self._call(self.stub.AssignAdapter, pb.AssignAdapterRequest(tenant=tenant, adapter=adapter))

    def set_boost(self, tenant: str, phrases) -> pb.Tenant:
        """Replace ``tenant``'s boost phrases: ``(text, boost)`` pairs (boost 0: the default)."""
        return self._call(self.stub.SetTenantBoost, pb.SetTenantBoostRequest(
            tenant=tenant, phrases=[pb.BoostPhrase(phrase=t, boost=b) for t, b in phrases]))

    def tenants(self) -> list[pb.Tenant]:
        return list(self._call(self.stub.ListTenants, pb.ListTenantsRequest()).tenants)

    def adapters(self) -> list[pb.Adapter]:
        return list(self._call(self.stub.ListAdapters, pb.ListAdaptersRequest()).adapters)

    def publish_model(self, folder: str | os.PathLike, name: str, version: str, *, kind: str = "full",
                      description: str = "", parent_fingerprint: str = "", source: dict | None = None,
                      rollout: bool = True, timeout: float = 3600.0) -> pb.PublishModelResponse:
        """Upload the export at ``folder`` as ``name@version`` (every file, hashed first, then sent
        in chunks of :data:`MODEL_CHUNK_BYTES`)."""
        from brogue.models.store import export_files

        folder = Path(folder)
        files = export_files(folder)
        header = pb.PublishModelHeader(
            name=name, version=version, kind=kind, description=description, parent_fingerprint=parent_fingerprint,
            source_json=json.dumps(source) if source else "", rollout=rollout,
            files=[pb.ModelFile(path=p, size_bytes=f.size_bytes, sha256=f.sha256) for p, f in files.items()])
        try:
            return self.stub.PublishModel(model_chunks(folder, header), metadata=self._metadata, timeout=timeout)
        except grpc.RpcError as e:
            raise AdminClientError(e.code().name, e.details() or str(e)) from None

    def assign_model(self, tenant: str, model: str, adapter: str = "") -> pb.Tenant:
        return self._call(self.stub.AssignModel, pb.AssignModelRequest(tenant=tenant, model=model, adapter=adapter))

    def pin_model(self, model: str, pinned: bool = True) -> pb.Model:
        return self._call(self.stub.PinModel, pb.PinModelRequest(model=model, pinned=pinned))

    def models(self) -> pb.ListModelsResponse:
        return self._call(self.stub.ListModels, pb.ListModelsRequest())


MODEL_CHUNK_BYTES = 4 << 20


def model_chunks(folder: Path, header: pb.PublishModelHeader):
    """The messages of a model upload: the header, then each file's bytes in order."""
    yield pb.PublishModelChunk(header=header)
    for f in header.files:
        with open(Path(folder) / f.path, "rb") as fh:
            offset = 0
            for block in iter(lambda: fh.read(MODEL_CHUNK_BYTES), b""):
                yield pb.PublishModelChunk(path=f.path, offset=offset, data=block)
                offset += len(block)


def adapter_dict(a: pb.Adapter) -> dict:
    return {"ref": a.ref, "kind": a.kind, "description": a.description, "dim": a.dim, "n_layers": a.n_layers,
            "d_model": a.d_model, "sha256": a.sha256, "size_bytes": a.size_bytes,
            "base_fingerprint": a.base_fingerprint, "created_at": a.created_at, "tenants": list(a.tenants),
            "error": a.error or None, "error_code": a.error_code or None,
            "domain_lm_sentences": a.domain_lm_sentences}


def model_dict(m: pb.Model) -> dict:
    return {"ref": m.ref or None, "base": m.base, "name": m.name, "version": m.version or None, "kind": m.kind,
            "description": m.description, "fingerprint": m.fingerprint, "parent_fingerprint": m.parent_fingerprint,
            "created_at": m.created_at, "size_bytes": m.size_bytes, "serving_bytes": m.serving_bytes,
            "instances_loaded": m.instances_loaded, "live_streams": m.live_streams, "pinned": m.pinned,
            "tenants": list(m.tenants), "error": m.error or None, "error_code": m.error_code or None}


def tenant_dict(t: pb.Tenant) -> dict:
    return {"name": t.name, "model": t.model or None, "adapter": t.adapter or None, "max_streams": t.max_streams,
            "max_stream_seconds": t.max_stream_seconds, "live_streams": t.live_streams,
            "api_keys": t.api_keys, "boost": [{"phrase": p.phrase, "boost": p.boost} for p in t.boost]}
