"""HTTP status, error body and transport exception mapping onto Transient/Fatal errors."""

from __future__ import annotations

import json

import httpx
import pytest

from app.llm.base import FatalProviderError, TransientProviderError
from app.llm.http_errors import (
    error_for_exception,
    error_for_status,
    error_message_from_body,
    parse_retry_after,
)

KEY = "sk-test-SECRET-0123456789"


@pytest.mark.parametrize(
    ("status", "kind", "code"),
    [
        (429, TransientProviderError, "rate_limited"),
        (500, TransientProviderError, "upstream_error"),
        (502, TransientProviderError, "upstream_error"),
        (503, TransientProviderError, "upstream_error"),
        (529, TransientProviderError, "overloaded"),
        (408, TransientProviderError, "upstream_error"),
        (400, FatalProviderError, "bad_request"),
        (404, FatalProviderError, "bad_request"),
        (422, FatalProviderError, "bad_request"),
        (401, FatalProviderError, "auth_failed"),
        (403, FatalProviderError, "auth_failed"),
    ],
)
def test_status_mapping(status: int, kind: type, code: str) -> None:
    error = error_for_status(status, b'{"error": {"message": "nope"}}', {}, [KEY])
    assert type(error) is kind
    assert error.code == code
    assert error.status == status
    assert "nope" in error.message


def test_retry_after_is_carried_on_429() -> None:
    error = error_for_status(429, b"", {"retry-after": "7"}, [])
    assert error.retry_after == 7.0


def test_key_echoed_by_the_upstream_is_redacted() -> None:
    body = json.dumps({"error": {"message": f"Incorrect API key provided: {KEY}", "type": "invalid_api_key"}})
    error = error_for_status(401, body.encode(), {}, [KEY])
    for text in (str(error), repr(error), error.message, str(error.args)):
        assert KEY not in text
    assert "[REDACTED]" in error.message


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"error": {"message": "bad model", "type": "invalid_request_error"}}', "bad model (invalid_request_error)"),
        (
            b'{"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}',
            "Overloaded (overloaded_error)",
        ),
        (b'{"detail": "Not Found"}', "Not Found"),
        (b'{"error": "plain"}', "plain"),
        (b"<html>Bad Gateway</html>", "<html>Bad Gateway</html>"),
        (b"", "(empty body)"),
    ],
)  # fmt: skip
def test_error_message_shapes(body: bytes, expected: str) -> None:
    assert error_message_from_body(body) == expected


def test_huge_error_bodies_are_clipped() -> None:
    assert len(error_message_from_body(b"x" * 100_000)) <= 500


def test_retry_after_parsing() -> None:
    assert parse_retry_after(None) is None
    assert parse_retry_after("1.5") == 1.5
    assert parse_retry_after("garbage") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0


@pytest.mark.parametrize(
    ("exc", "kind", "code"),
    [
        (httpx.ReadTimeout("timed out"), TransientProviderError, "timeout"),
        (httpx.ConnectTimeout("timed out"), TransientProviderError, "timeout"),
        (httpx.ConnectError("refused"), TransientProviderError, "connection_error"),
        (httpx.ReadError("reset by peer"), TransientProviderError, "connection_error"),
        (httpx.RemoteProtocolError("incomplete chunked read"), TransientProviderError, "incomplete_stream"),
        (httpx.UnsupportedProtocol("ftp"), FatalProviderError, "bad_request"),
        (httpx.LocalProtocolError("bad header"), FatalProviderError, "bad_request"),
        (ConnectionResetError(104, "reset"), TransientProviderError, "connection_error"),
        (RuntimeError("weird"), FatalProviderError, "bad_request"),
    ],
)
def test_exception_mapping(exc: Exception, kind: type, code: str) -> None:
    error = error_for_exception(exc, [KEY])
    assert type(error) is kind
    assert error.code == code
    assert type(exc).__name__ in error.message


def test_exception_text_is_redacted() -> None:
    error = error_for_exception(httpx.LocalProtocolError(f"Illegal header value b'Bearer {KEY} '"), [KEY])
    assert KEY not in str(error)
