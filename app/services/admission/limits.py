"""The limits that apply to one execution: its workspace's (column or WORKSPACE_* default) and its credential's."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from flask import current_app
from sqlalchemy import select

from app.extensions import db
from app.models import Credential, Workspace
from app.services.errors import NotFound
from coordination.forksafe import ForkSafeLock

CREDENTIAL_LIMIT_NAMES = ("max_concurrency", "requests_per_minute", "tokens_per_minute")
CACHE_TTL_S = 5.0  # a changed limit applies to new executions within this long, without a query per execute


@dataclass(frozen=True)
class Limits:
    """0 means unlimited everywhere."""

    workspace_concurrency: int = 0
    tokens_per_day: int = 0
    credential_concurrency: int = 0
    requests_per_minute: int = 0
    tokens_per_minute: int = 0


def credential_limits(raw: dict[str, Any] | None) -> dict[str, int]:
    """The stored limits as shown on GET /credentials (every name, 0 when unset)."""
    return {name: int((raw or {}).get(name) or 0) for name in CREDENTIAL_LIMIT_NAMES}


_cache: dict[tuple[str, str], tuple[float, Limits]] = {}
_lock = ForkSafeLock()


def for_execution(workspace_id: str, credential_id: str | None) -> Limits:
    """One query per (workspace, credential) every CACHE_TTL_S in this process."""
    key = (workspace_id, credential_id or "")
    now = time.monotonic()
    with _lock:
        found = _cache.get(key)
    if found is not None and found[0] > now:
        return found[1]
    query = select(Workspace.max_concurrency, Workspace.tokens_per_day).where(Workspace.id == workspace_id)
    row = db.session.execute(query).one_or_none()
    raw: dict[str, Any] | None = None
    if credential_id:
        raw = db.session.execute(
            select(Credential.limits).where(Credential.id == credential_id, Credential.workspace_id == workspace_id)
        ).scalar_one_or_none()
    config = current_app.config
    cred = credential_limits(raw)
    limits = Limits(
        workspace_concurrency=_default(row.max_concurrency if row else None, config["WORKSPACE_MAX_CONCURRENCY"]),
        tokens_per_day=_default(row.tokens_per_day if row else None, config["WORKSPACE_TOKENS_PER_DAY"]),
        credential_concurrency=cred["max_concurrency"],
        requests_per_minute=cred["requests_per_minute"],
        tokens_per_minute=cred["tokens_per_minute"],
    )
    with _lock:
        _cache[key] = (now + CACHE_TTL_S, limits)
    return limits


def _default(value: int | None, default: Any) -> int:
    return int(default) if value is None else int(value)


def forget() -> None:
    """Drop the cache (a command or test just changed a limit)."""
    with _lock:
        _cache.clear()


def set_workspace_limits(name: str, *, max_concurrency: int | None, tokens_per_day: int | None) -> Workspace:
    """`flask workspaces limits NAME`: None keeps a value as it is; a negative one goes back to the default."""
    workspace = db.session.execute(select(Workspace).where(Workspace.name == name)).scalar_one_or_none()
    if workspace is None:
        raise NotFound(f"workspace {name} not found", {"workspace": name})
    if max_concurrency is not None:
        workspace.max_concurrency = None if max_concurrency < 0 else max_concurrency
    if tokens_per_day is not None:
        workspace.tokens_per_day = None if tokens_per_day < 0 else tokens_per_day
    db.session.commit()
    forget()
    return workspace
