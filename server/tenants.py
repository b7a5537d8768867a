"""Tenants: API keys (stored hashed), model and adapter references and limits, from a TOML file.

    admin_token_sha256 = "…"            # sha256 hex of the admin token (optional)
    pinned_models = ["ward@v2"]         # model versions kept loaded (never unloaded to make room)

    [tenants.acme]
    api_keys_sha256 = ["…"]             # sha256 hex of each API key
    model = "ward@v2"                   # name@version in the model store; "" = the deployment's base
    adapter = "acme@v3"                 # name@version in the adapter store, trained on that model;
                                        # "" = the model alone
    max_streams = 4                     # concurrent streams
    max_stream_seconds = 3600           # audio seconds per stream
    boost = ["acme cloud", { phrase = "zyrtec", boost = 12 }]  # phrases every stream boosts

Keys never appear in the file or in logs, only their SHA-256. :class:`TenantRegistry` re-reads the
file when its modification time changes, so edits take effect without a restart; a bad edit is
logged and the previous tenants stay in force. It also counts each tenant's live streams and hands
out :class:`Lease`\\ s that enforce ``max_streams``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import threading
import tomllib
from dataclasses import dataclass
from pathlib import Path

from brogue.adapters import AdapterRef
from brogue.boosting import BoostError, validate
from brogue.models import ModelRef

log = logging.getLogger(__name__)


class AuthError(PermissionError):
    """Missing or wrong key or token."""


class LimitError(RuntimeError):
    """A tenant limit is reached."""


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class Tenant:
    name: str
    key_hashes: tuple[str, ...]
    adapter: str  # "" = the model alone
    max_streams: int = 4
    max_stream_seconds: float = 3600.0
    boost: tuple = ()  # brogue.boosting.BoostPhrase, merged with each request's
    model: str = ""  # name@version in the model store; "" = the deployment's base model


def parse_tenants(text: str, origin: str = "tenants file") -> tuple[dict[str, Tenant], str | None]:
    """Tenants by name and the admin token hash; ``ValueError`` naming the problem."""
    tenants, admin, _ = parse_file(text, origin)
    return tenants, admin


def parse_file(text: str, origin: str = "tenants file") -> tuple[dict[str, Tenant], str | None, tuple[str, ...]]:
    """Tenants by name, the admin token hash and the pinned model versions; ``ValueError`` naming
    the problem."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{origin}: invalid TOML: {e}") from None
    tenants = {}
    seen: dict[str, str] = {}
    for name, t in (data.get("tenants") or {}).items():
        if not isinstance(t, dict):
            raise ValueError(f"{origin}: [tenants.{name}] must be a table")
        keys = t.get("api_keys_sha256", [])
        if not isinstance(keys, list) or not all(isinstance(k, str) and len(k) == 64 for k in keys):
            raise ValueError(f"{origin}: tenant {name}: api_keys_sha256 must be a list of sha256 hex strings")
        for k in keys:
            if k in seen:
                raise ValueError(f"{origin}: a key of tenant {name} is also a key of tenant {seen[k]}")
            seen[k] = name
        adapter = t.get("adapter", "")
        if adapter:
            AdapterRef.parse(adapter)  # ValueError for a malformed reference
        model = t.get("model", "")
        if not isinstance(model, str):
            raise ValueError(f"{origin}: tenant {name}: model must be a 'name@version' string")
        if model:
            try:
                ModelRef.parse(model)
            except ValueError as e:
                raise ValueError(f"{origin}: tenant {name}: {e}") from None
        max_streams = t.get("max_streams", 4)
        max_seconds = t.get("max_stream_seconds", 3600)
        if not isinstance(max_streams, int) or max_streams < 1:
            raise ValueError(f"{origin}: tenant {name}: max_streams must be a positive integer")
        if not isinstance(max_seconds, (int, float)) or max_seconds <= 0:
            raise ValueError(f"{origin}: tenant {name}: max_stream_seconds must be positive")
        boost = t.get("boost", [])
        if not isinstance(boost, list):
            raise ValueError(f"{origin}: tenant {name}: boost must be a list of phrases")
        try:
            phrases = validate(boost)
        except BoostError as e:
            raise ValueError(f"{origin}: tenant {name}: {e}") from None
        tenants[name] = Tenant(name, tuple(keys), adapter, max_streams, float(max_seconds), phrases, model)
    admin = data.get("admin_token_sha256")
    if admin is not None and (not isinstance(admin, str) or len(admin) != 64):
        raise ValueError(f"{origin}: admin_token_sha256 must be a sha256 hex string")
    pinned = data.get("pinned_models", [])
    if not isinstance(pinned, list) or not all(isinstance(p, str) for p in pinned):
        raise ValueError(f"{origin}: pinned_models must be a list of 'name@version' strings")
    for p in pinned:
        ModelRef.parse(p)
    return tenants, admin, tuple(sorted(set(pinned)))


class Lease:
    """One live stream of a tenant; :meth:`release` (or ``with``) gives the slot back."""

    def __init__(self, registry: "TenantRegistry", tenant: Tenant):
        self.registry, self.tenant, self._open = registry, tenant, True

    def release(self) -> None:
        if self._open:
            self._open = False
            self.registry._release(self.tenant.name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


class TenantRegistry:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._mtime: int | None = None
        self._tenants: dict[str, Tenant] = {}
        self._by_key: dict[str, str] = {}
        self._admin: str | None = None
        self._pinned: tuple[str, ...] = ()
        self._live: dict[str, int] = {}
        self.reload(strict=True)

    def reload(self, strict: bool = False) -> bool:
        """Re-read the file if it changed; returns whether it did. A bad file raises when ``strict``,
        else it is logged and ignored."""
        try:
            mtime = self.path.stat().st_mtime_ns
        except FileNotFoundError:
            if strict:
                raise FileNotFoundError(f"{self.path}: no tenants file") from None
            return False
        if mtime == self._mtime:
            return False
        try:
            tenants, admin, pinned = parse_file(self.path.read_text(), str(self.path))
        except ValueError as e:
            if strict:
                raise
            log.error("tenants file not reloaded, keeping the previous tenants: %s", e)
            self._mtime = mtime
            return False
        with self._lock:
            self._tenants, self._admin, self._pinned, self._mtime = tenants, admin, pinned, mtime
            self._by_key = {k: t.name for t in tenants.values() for k in t.key_hashes}
        log.info("tenants loaded: %s", ", ".join(sorted(tenants)) or "none")
        return True

    def authenticate(self, api_key: str | None) -> Tenant:
        """The tenant of ``api_key``; :class:`AuthError` for a missing or unknown key."""
        self.reload()
        if not api_key:
            raise AuthError("missing API key")
        name = self._by_key.get(key_hash(api_key))
        if name is None:
            raise AuthError("invalid API key")
        return self._tenants[name]

    def check_admin(self, token: str | None) -> None:
        self.reload()
        if self._admin is None:
            raise AuthError("admin calls are disabled: the tenants file sets no admin_token_sha256")
        if not token or not hmac.compare_digest(key_hash(token), self._admin):
            raise AuthError("invalid admin token")

    def open_stream(self, tenant: Tenant) -> Lease:
        """Count a new stream of ``tenant``; :class:`LimitError` beyond ``max_streams``."""
        with self._lock:
            live = self._live.get(tenant.name, 0)
            current = self._tenants.get(tenant.name, tenant)
            if live >= current.max_streams:
                raise LimitError(f"tenant {tenant.name} already has {live} live stream(s), its limit")
            self._live[tenant.name] = live + 1
        return Lease(self, current)

    def _release(self, name: str) -> None:
        with self._lock:
            self._live[name] = max(0, self._live.get(name, 0) - 1)

    def live_streams(self) -> dict[str, int]:
        with self._lock:
            return dict(self._live)

    def tenants(self) -> dict[str, Tenant]:
        self.reload()
        return dict(self._tenants)

    def pinned_models(self) -> tuple[str, ...]:
        self.reload()
        return self._pinned

    def models_in_use(self) -> set[str]:
        """The model references tenants point at ("" for the base model among them)."""
        return {t.model for t in self.tenants().values()}

    def set_adapter(self, tenant: str, adapter: str) -> Tenant:
        """Point ``tenant`` at ``adapter`` and write the file (atomically). Open streams keep theirs."""
        if adapter:
            AdapterRef.parse(adapter)
        return self._rewrite(tenant, {"adapter": json.dumps(adapter)}, lambda t: t.adapter == adapter)

    def set_model(self, changes: dict[str, tuple[str, str]]) -> dict[str, Tenant]:
        """Point each tenant of ``changes`` (``{tenant: (model, adapter)}``) at that model version and
        adapter, in one write of the file (atomically): a rollout moves its tenants together. Open
        streams keep theirs."""
        for model, adapter in changes.values():
            if model:
                ModelRef.parse(model)
            if adapter:
                AdapterRef.parse(adapter)
        keys = {name: {"model": json.dumps(m), "adapter": json.dumps(a)} for name, (m, a) in changes.items()}
        return self._rewrite_many(keys, lambda ts: all((ts[n].model, ts[n].adapter) == changes[n] for n in changes))

    def set_pinned(self, pinned) -> tuple[str, ...]:
        """Replace the pinned model versions and write the file (atomically)."""
        pinned = tuple(sorted({str(ModelRef.parse(p)) for p in pinned}))
        value = "[" + ", ".join(json.dumps(p) for p in pinned) + "]"
        with self._lock:
            updated = _set_top_key(self.path.read_text(), "pinned_models", value)
            if parse_file(updated)[2] != pinned:
                raise ValueError("could not rewrite pinned_models")
            self._replace(updated)
        self.reload(strict=True)
        return self._pinned

    def set_boost(self, tenant: str, phrases) -> Tenant:
        """Replace ``tenant``'s boost phrases (:class:`brogue.boosting.BoostPhrase`, validated) and
        write the file (atomically). Open streams keep the phrases they started with."""
        phrases = validate(phrases)
        value = "[" + ", ".join(f"{{ phrase = {json.dumps(p.text)}, boost = {p.boost:g} }}" for p in phrases) + "]"
        return self._rewrite(tenant, {"boost": value}, lambda t: t.boost == phrases)

    def _rewrite(self, tenant: str, values: dict[str, str], check) -> Tenant:
        """Set keys of ``tenant`` to TOML ``values``; the new text is parsed and ``check``-ed (on
        the tenant as it would read) before it replaces the file."""
        return self._rewrite_many({tenant: values}, lambda ts: check(ts[tenant]))[tenant]

    def _rewrite_many(self, values: dict[str, dict[str, str]], check) -> dict[str, Tenant]:
        with self._lock:
            unknown = [t for t in values if t not in self._tenants]
            if unknown:
                raise KeyError(f"no tenant {unknown[0]!r}")
            updated = self.path.read_text()
            for tenant, keys in values.items():
                for key, value in keys.items():
                    updated = _set_toml_key(updated, tenant, key, value)
            if not check(parse_tenants(updated)[0]):
                raise ValueError(f"could not rewrite {', '.join(sorted({k for v in values.values() for k in v}))} "
                                 f"of tenant(s) {', '.join(sorted(values))}")
            self._replace(updated)
        self.reload(strict=True)
        return {t: self._tenants[t] for t in values}

    def _replace(self, text: str) -> None:
        """Write the file atomically (under the lock); the next reload reads it."""
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(text)
        os.replace(tmp, self.path)
        self._mtime = None


def _set_top_key(text: str, key: str, value: str) -> str:
    """Rewrite (or add, before the first table) the top-level one-line ``KEY = VALUE``."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        stripped = line.strip()
        if stripped.startswith("["):
            lines.insert(i, f"{key} = {value}")
            break
        if stripped.split("=")[0].strip() == key:
            lines[i] = f"{key} = {value}"
            break
    else:
        lines.append(f"{key} = {value}")
    return "\n".join(lines) + "\n"


def _set_toml_key(text: str, tenant: str, key: str, value: str) -> str:
    """Rewrite (or add) the one-line ``KEY = VALUE`` of ``[tenants.NAME]`` (``value`` is TOML),
    keeping the rest of the file as it is."""
    lines = text.splitlines()
    header = f"[tenants.{tenant}]"
    out, in_table, done = [], False, False
    for line in lines:
        stripped = line.strip()
        if stripped.startswith("["):
            if in_table and not done:
                out.append(f"{key} = {value}")
                done = True
            in_table = stripped == header
        elif in_table and stripped.split("=")[0].strip() == key:
            out.append(f"{key} = {value}")
            done = True
            continue
        out.append(line)
    if in_table and not done:
        out.append(f"{key} = {value}")
    return "\n".join(out) + "\n"
