"""API keys: shown once at creation, stored only as a SHA-256 hash."""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass

from flask import current_app
from sqlalchemy import select

from app.extensions import db
from app.models import ApiKey, Workspace
from app.services import audit
from coordination.forksafe import ForkSafeLock

KEY_PREFIX = "ar_"


@dataclass(frozen=True)
class Principal:
    """Who is calling: the workspace a key belongs to, and an actor name for audit rows."""

    workspace_id: str
    key_id: str
    actor: str


def hash_key(raw_key: str) -> str:
    return hashlib.sha256(raw_key.encode()).hexdigest()


def get_or_create_workspace(name: str) -> Workspace:
    workspace = db.session.execute(select(Workspace).where(Workspace.name == name)).scalar_one_or_none()
    if workspace is None:
        workspace = Workspace(name=name)
        db.session.add(workspace)
        db.session.flush()
    return workspace


def create_key(workspace_name: str, actor: str = "cli") -> tuple[ApiKey, str]:
    """Create the workspace if needed and a new key for it; returns the row and the raw key."""
    workspace = get_or_create_workspace(workspace_name)
    raw_key = KEY_PREFIX + secrets.token_urlsafe(32)
    key = ApiKey(workspace_id=workspace.id, key_hash=hash_key(raw_key), prefix=raw_key[:10])
    db.session.add(key)
    db.session.flush()
    audit.record(
        workspace_id=workspace.id,
        actor=actor,
        action="key.created",
        details={"key_id": key.id, "prefix": key.prefix},
    )
    db.session.commit()
    return key, raw_key


# Principals of recently seen keys, per process: (database URL, key hash) -> (principal, expires at).
# Keys cannot be revoked through the API today; should revoked_at be set by hand, a process keeps accepting
# the key for at most AUTH_CACHE_TTL_S (0 disables the cache). Unknown keys are never cached.
_cache: dict[tuple[str, str], tuple[Principal, float]] = {}
_cache_lock = ForkSafeLock()
_CACHE_MAX = 10_000


def authenticate(raw_key: str) -> Principal | None:
    """The key's principal: from the per-process cache (AUTH_CACHE_TTL_S), else one SELECT."""
    digest = hash_key(raw_key)
    ttl = float(current_app.config.get("AUTH_CACHE_TTL_S", 0))
    cache_key = (str(current_app.config.get("SQLALCHEMY_DATABASE_URI")), digest)
    now = time.monotonic()
    if ttl > 0:
        hit = _cache.get(cache_key)
        if hit is not None and hit[1] > now:
            return hit[0]
    key = db.session.execute(
        select(ApiKey).where(ApiKey.key_hash == digest, ApiKey.revoked_at.is_(None))
    ).scalar_one_or_none()
    if key is None:
        return None
    principal = Principal(workspace_id=key.workspace_id, key_id=key.id, actor=f"key:{key.prefix}")
    if ttl > 0:
        with _cache_lock:
            if len(_cache) >= _CACHE_MAX:
                _cache.clear()
            _cache[cache_key] = (principal, now + ttl)
    return principal


def forget_cached_keys() -> None:
    """Drop every cached principal (tests; or after revoking a key by hand)."""
    with _cache_lock:
        _cache.clear()
