"""Scrub secrets out of text before it reaches an exception, a repr or a log line."""

from __future__ import annotations

from collections.abc import Iterable

REDACTED = "[REDACTED]"
MAX_MESSAGE_CHARS = 500


def redact(text: str, secrets: Iterable[str | None]) -> str:
    """Replace every occurrence of each secret with a marker, so upstream echoes never leak a key."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, REDACTED)
    return text


def clip(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """Bound an upstream message so a huge error body cannot bloat an execution row."""
    text = text.strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"
