"""Tenants: API keys (stored hashed), adapter references and limits, from a TOML file.

    admin_token_sha256 = "…"            # sha256 hex of the admin token (optional)

    [tenants.acme]
    api_keys_sha256 = ["…"]             # sha256 hex of each API key
    adapter = "acme@v3"                 # name@version in the adapter store; "" = base model
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
    adapter: str  # "" = base model
    max_streams: int = 4
    max_stream_seconds: float = 3600.0
    boost: tuple = ()  # brogue.boosting.BoostPhrase, merged with each request's


def parse_tenants(text: str, origin: str = "tenants file") -> tuple[dict[str, Tenant], str | None]:
    """Tenants by name and the admin token hash; ``ValueError`` naming the problem."""
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
        tenants[name] = Tenant(name, tuple(keys), adapter, max_streams, float(max_seconds), phrases)
    admin = data.get("admin_token_sha256")
    if admin is not None and (not isinstance(admin, str) or len(admin) != 64):
        raise ValueError(f"{origin}: admin_token_sha256 must be a sha256 hex string")
    return tenants, admin


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
            tenants, admin = parse_tenants(self.path.read_text(), str(self.path))
        except ValueError as e:
            if strict:
                raise
            log.error("tenants file not reloaded, keeping the previous tenants: %s", e)
            self._mtime = mtime
            return False
        with self._lock:
            self._tenants, self._admin, self._mtime = tenants, admin, mtime
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

    def set_adapter(self, tenant: str, adapter: str) -> Tenant:
        """Point ``tenant`` at ``adapter`` and write the file (atomically). Open streams keep theirs."""
        if adapter:
            AdapterRef.parse(adapter)
        return self._rewrite(tenant, "adapter", json.dumps(adapter), lambda t: t.adapter == adapter)

    def set_boost(self, tenant: str, phrases) -> Tenant:
        """Replace ``tenant``'s boost phrases (:class:`brogue.boosting.BoostPhrase`, validated) and
        write the file (atomically). Open streams keep the phrases they started with."""
        phrases = validate(phrases)
        value = "[" + ", ".join(f"{{ phrase = {json.dumps(p.text)}, boost = {p.boost:g} }}" for p in phrases) + "]"
        return self._rewrite(tenant, "boost", value, lambda t: t.boost == phrases)

    def _rewrite(self, tenant: str, key: str, value: str, check) -> Tenant:
        """Set ``key`` of ``tenant`` to the TOML ``value``; the new text is parsed and ``check``\ ed
        (on the tenant as it would read) before it replaces the file."""
        with self._lock:
            if tenant not in self._tenants:
                raise KeyError(f"no tenant {tenant!r}")
            updated = _set_toml_key(self.path.read_text(), tenant, key, value)
            if not check(parse_tenants(updated)[0][tenant]):
                raise ValueError(f"could not rewrite {key} of tenant {tenant}")
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(updated)
            os.replace(tmp, self.path)
            self._mtime = None
        self.reload(strict=True)
        return self._tenants[tenant]


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
