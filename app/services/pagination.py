"""Opaque keyset cursors so lists stay stable while rows are added."""

from __future__ import annotations

import base64
import binascii
import json
from datetime import datetime
from typing import Any

from sqlalchemy import Select, and_, or_

from app.extensions import db
from app.services.errors import ValidationFailed
from app.timeutil import as_utc, iso

DEFAULT_LIMIT = 50
MAX_LIMIT = 200


def encode_cursor(values: dict[str, Any]) -> str:
    raw = json.dumps(values, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> dict[str, Any] | None:
    """Reject anything we did not issue with a 422 rather than a 500."""
    if not cursor:
        return None
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        raw = base64.urlsafe_b64decode(padded.encode()).decode()
        value = json.loads(raw)
    except (binascii.Error, ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise ValidationFailed("invalid cursor", {"cursor": cursor}) from exc
    if not isinstance(value, dict) or any("\x00" in str(item) for pair in value.items() for item in pair):
        raise ValidationFailed("invalid cursor", {"cursor": cursor})
    return value


def parse_limit(raw: str | None) -> int:
    if raw is None or raw == "":
        return DEFAULT_LIMIT
    try:
        limit = int(raw)
    except ValueError as exc:
        raise ValidationFailed("limit must be an integer", {"limit": raw}) from exc
    if not 1 <= limit <= MAX_LIMIT:
        raise ValidationFailed(f"limit must be between 1 and {MAX_LIMIT}", {"limit": limit})
    return limit


def _position(cursor: str | None) -> tuple[datetime, str] | None:
    """The (created_at, id) a newest-first cursor points after."""
    position = decode_cursor(cursor)
    if position is None:
        return None
    created_raw, last_id = position.get("c"), position.get("i")
    if not isinstance(created_raw, str) or not isinstance(last_id, str):
        raise ValidationFailed("invalid cursor", {"cursor": cursor})
    try:
        return as_utc(datetime.fromisoformat(created_raw.replace("Z", "+00:00"))), last_id
    except (ValueError, OverflowError) as exc:
        raise ValidationFailed("invalid cursor", {"cursor": cursor}) from exc


def newest_first(query: Select[Any], model: Any, *, limit: int, cursor: str | None) -> tuple[list[Any], str | None]:
    """One page of a model with created_at and id columns, newest first, keyset-paginated by (created_at, id)."""
    position = _position(cursor)
    if position is not None:
        created, last_id = position
        query = query.where(or_(model.created_at < created, and_(model.created_at == created, model.id < last_id)))
    rows = list(
        db.session.execute(query.order_by(model.created_at.desc(), model.id.desc()).limit(limit + 1)).scalars()
    )
    next_cursor = None
    if len(rows) > limit:
        last = rows[limit - 1]
        next_cursor = encode_cursor({"c": iso(last.created_at), "i": last.id})
    return rows[:limit], next_cursor
