"""Mapping of HTTP statuses, error bodies and transport failures onto Transient/Fatal provider errors."""

from __future__ import annotations

import email.utils
import json
import time
from collections.abc import Iterable, Mapping
from typing import Any

import httpx

from app.llm.base import (
    AUTH_FAILED,
    BAD_REQUEST,
    CONNECTION_ERROR,
    INCOMPLETE_STREAM,
    OVERLOADED,
    RATE_LIMITED,
    TIMEOUT,
    UPSTREAM_ERROR,
    FatalProviderError,
    ProviderError,
    TransientProviderError,
)
from app.llm.redact import clip, redact

TRANSIENT_4XX = frozenset({408, 429})
"""4xx statuses a retry can fix: 429 rate limit and 408 request timeout (as the vendors' SDKs retry)."""


def error_message_from_body(body: bytes) -> str:
    """The human message of an error body in OpenAI, Anthropic, FastAPI (vLLM) or plain-text shape."""
    text = body.decode("utf-8", errors="replace")
    try:
        payload = json.loads(text)
    except ValueError:
        return clip(text) or "(empty body)"
    return clip(_message_from_json(payload) or text) or "(empty body)"


def _message_from_json(payload: Any) -> str | None:
    """Dig the message out of {"error": {"message"}}, {"error": "..."}, {"message"} or {"detail"}."""
    if not isinstance(payload, dict):
        return None
    error = payload.get("error")
    if isinstance(error, dict):
        message = error.get("message")
        kind = error.get("type") or error.get("code")
        if isinstance(message, str):
            return f"{message} ({kind})" if isinstance(kind, str) and kind else message
    if isinstance(error, str):
        return error
    for key in ("message", "detail"):
        value = payload.get(key)
        if isinstance(value, str):
            return value
    return None


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date), if usable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def error_for_status(
    status: int, body: bytes, headers: Mapping[str, str], secrets: Iterable[str | None]
) -> ProviderError:
    """Classify a non-2xx response: 408/429/5xx transient, 401/403 auth (fatal), other 4xx fatal."""
    message = redact(error_message_from_body(body), secrets)
    text = f"HTTP {status}: {message}"
    retry_after = parse_retry_after(headers.get("retry-after"))
    if status == 429:
        return TransientProviderError(RATE_LIMITED, text, status=status, retry_after=retry_after)
    if status == 529:
        return TransientProviderError(OVERLOADED, text, status=status, retry_after=retry_after)
    if status >= 500 or status in TRANSIENT_4XX:
        return TransientProviderError(UPSTREAM_ERROR, text, status=status, retry_after=retry_after)
    if status in (401, 403):
        return FatalProviderError(AUTH_FAILED, text, status=status)
    return FatalProviderError(BAD_REQUEST, text, status=status)


def error_for_exception(exc: Exception, secrets: Iterable[str | None]) -> ProviderError:
    """Classify an httpx transport failure; timeouts, resets and refused connections are transient."""
    detail = redact(clip(f"{type(exc).__name__}: {exc}"), secrets)
    if isinstance(exc, httpx.TimeoutException):
        return TransientProviderError(TIMEOUT, f"upstream timed out ({detail})")
    if isinstance(exc, httpx.RemoteProtocolError):
        return TransientProviderError(INCOMPLETE_STREAM, f"upstream closed the connection ({detail})")
    if isinstance(exc, httpx.TransportError) and not isinstance(
        exc, httpx.UnsupportedProtocol | httpx.LocalProtocolError
    ):
        return TransientProviderError(CONNECTION_ERROR, f"connection failed ({detail})")
    if isinstance(exc, httpx.InvalidURL | httpx.UnsupportedProtocol):
        return FatalProviderError(BAD_REQUEST, f"invalid provider base_url ({detail})")
    if isinstance(exc, OSError):
        return TransientProviderError(CONNECTION_ERROR, f"connection failed ({detail})")
    return FatalProviderError(BAD_REQUEST, f"request failed ({detail})")
