"""Idempotency-Key support: a stable fingerprint of a request, so a replay can be told from a different body."""

from __future__ import annotations

import hashlib
import json
from typing import Any

MAX_KEY_LENGTH = 255


def request_hash(*, agent_id: str, body: dict[str, Any]) -> str:
    """SHA-256 of the target and the normalised body (defaults filled, keys sorted), so formatting never matters."""
    canonical = json.dumps(
        {"agent_id": agent_id, "body": body}, sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    return hashlib.sha256(canonical.encode()).hexdigest()
