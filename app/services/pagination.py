"""Opaque keyset cursors so lists stay stable while rows are added."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from app.services.errors import ValidationFailed

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
    if not isinstance(value, dict) or "\\u0000" in raw or "\x00" in raw:
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
