"""The webhook tool client: a signed, idempotent POST to a checked address, retried only when that is safe."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from app.llm.base import ShouldStop, Stopped
from app.llm.http_errors import error_message_from_body, parse_retry_after
from app.llm.stopping import wait_or_stop
from app.services.backoff import retry_delay
from app.services.tools.addresses import (
    AddressRefused,
    Resolver,
    parse_allowed_hosts,
    parse_url,
    resolve_checked,
    system_resolver,
)

log = logging.getLogger(__name__)

MAX_ANSWER_BYTES = 1024 * 1024
TRANSIENT_STATUSES = frozenset({408, 429})
FORBIDDEN_ADDRESS = "forbidden_address"
CONNECTION_ERROR = "connection_error"
TIMEOUT = "timeout"
HTTP_ERROR = "http_error"
ANSWER_TOO_LARGE = "answer_too_large"
BAD_ANSWER = "bad_answer"
STOPPED = "stopped"


@dataclass(frozen=True)
class WebhookSettings:
    """Per-deployment limits; `signing_key` signs every body, so receivers can tell our calls from forgeries."""

    signing_key: bytes = field(repr=False)
    allowed_hosts: frozenset[str] = frozenset()
    max_attempts: int = 4
    retry_base_s: float = 0.5
    retry_cap_s: float = 8.0
    max_answer_bytes: int = MAX_ANSWER_BYTES


@dataclass(frozen=True)
class WebhookCall:
    """One tool call to deliver; tool_call_id is the Idempotency-Key of every try."""

    url: str
    execution_id: str
    agent_id: str
    tool_call_id: str
    name: str
    arguments: Any
    timeout_s: float = 30.0


@dataclass(frozen=True)
class WebhookOutcome:
    """What the call produced: the receiver's JSON answer, or an error {code, message} for the LLM."""

    output: Any = None
    error: dict[str, Any] | None = None
    attempts: int = 0
    status: int | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


class _Transient(Exception):  # noqa: N818 - a retry signal
    """A try failed in a way another try with the same key may fix."""

    def __init__(self, code: str, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retry_after = retry_after


class _Fatal(Exception):  # noqa: N818 - an end signal
    """A try failed in a way no retry fixes."""

    def __init__(self, code: str, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status


def body_bytes(call: WebhookCall) -> bytes:
    """The exact bytes sent (and signed): compact JSON of the documented five fields."""
    payload = {"execution_id": call.execution_id, "agent_id": call.agent_id, "tool_call_id": call.tool_call_id,
               "name": call.name, "arguments": call.arguments}
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


def signature(key: bytes, body: bytes) -> str:
    """X-Signature value: sha256=<hex HMAC-SHA256 of the body>."""
    return "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()


def _pinned_url(scheme: str, address: str, port: int, target: str) -> str:
    """The request URL naming the checked IP, so the socket goes where the check looked (no DNS rebinding)."""
    host = f"[{address}]" if ":" in address else address
    return f"{scheme}://{host}:{port}{target}"


def _read_answer(response: httpx.Response, limit: int, deadline: float) -> bytes:
    """The body, streamed and abandoned past `limit` bytes or past the try's deadline."""
    declared = response.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _Fatal(ANSWER_TOO_LARGE, f"answer of {declared} bytes is over the {limit} byte limit")
    body = bytearray()
    for chunk in response.iter_bytes():
        body += chunk
        if len(body) > limit:
            raise _Fatal(ANSWER_TOO_LARGE, f"answer is over the {limit} byte limit")
        if time.monotonic() > deadline:
            raise _Transient(TIMEOUT, "answer took longer than timeout_s")
    return bytes(body)


def _try_once(call: WebhookCall, settings: WebhookSettings, resolver: Resolver,
              transport: httpx.BaseTransport | None) -> tuple[Any, int]:
    """One POST; return (JSON answer, status) or raise _Transient / _Fatal."""
    target = parse_url(call.url, settings.allowed_hosts)
    address = resolve_checked(target, settings.allowed_hosts, resolver)
    body = body_bytes(call)
    headers = {
        "Host": target.host_header,
        "Content-Type": "application/json",
        "Accept": "application/json",
        "Idempotency-Key": call.tool_call_id,
        "X-Signature": signature(settings.signing_key, body),
        "User-Agent": "agent-runtime-webhook/1",
    }
    deadline = time.monotonic() + call.timeout_s
    with httpx.Client(timeout=httpx.Timeout(call.timeout_s), transport=transport, follow_redirects=False,
                      trust_env=False) as client:
        with client.stream("POST", _pinned_url(target.scheme, address, target.port, target.target), content=body,
                           headers=headers, extensions={"sni_hostname": target.host}) as response:
            status = response.status_code
            raw = _read_answer(response, settings.max_answer_bytes, deadline)
    if status == 429 or status >= 500 or status in TRANSIENT_STATUSES:
        raise _Transient(HTTP_ERROR, f"HTTP {status}: {error_message_from_body(raw)}",
                         parse_retry_after(response.headers.get("retry-after")))
    if not 200 <= status < 300:
        raise _Fatal(HTTP_ERROR, f"HTTP {status}: {error_message_from_body(raw)}", status)
    try:
        return json.loads(raw), status
    except ValueError:
        raise _Fatal(BAD_ANSWER, f"answer is not JSON: {raw[:200].decode('utf-8', 'replace')}", status) from None


def _classify(exc: Exception) -> Exception:
    """Map transport failures onto retry (connect, timeouts, resets) or end (bad URLs, refused addresses)."""
    if isinstance(exc, AddressRefused):
        return _Fatal(FORBIDDEN_ADDRESS, str(exc))
    if isinstance(exc, httpx.TimeoutException):
        return _Transient(TIMEOUT, f"no answer within timeout_s ({type(exc).__name__})")
    if isinstance(exc, httpx.TransportError | ConnectionError | OSError) and not isinstance(
        exc, httpx.UnsupportedProtocol | httpx.LocalProtocolError
    ):
        return _Transient(CONNECTION_ERROR, f"connection failed: {type(exc).__name__}: {exc}"[:300])
    return _Fatal(CONNECTION_ERROR, f"request failed: {type(exc).__name__}: {exc}"[:300])


def jittered(delay: float, retry_after: float | None, rand: Callable[[], float] = random.random) -> float:
    """Spread retries of many calls (half to full delay), but never come back before a Retry-After."""
    spread = delay * (0.5 + 0.5 * rand())
    return max(spread, retry_after) if retry_after is not None else spread


def call_webhook(call: WebhookCall, settings: WebhookSettings, *, should_stop: ShouldStop = lambda: False,
                 resolver: Resolver = system_resolver, transport: httpx.BaseTransport | None = None) -> WebhookOutcome:
    """Deliver the call, retrying transient failures with the same Idempotency-Key; never raises."""
    attempt = 0
    last: _Transient | None = None
    while attempt < settings.max_attempts:
        attempt += 1
        try:
            output, status = _try_once(call, settings, resolver, transport)
            return WebhookOutcome(output=output, attempts=attempt, status=status)
        except (_Transient, _Fatal) as exc:
            failure: Exception = exc
        except Exception as exc:  # noqa: BLE001 - every transport failure ends up as a result, never a crash
            failure = _classify(exc)
        if isinstance(failure, _Fatal):
            return WebhookOutcome(error={"code": failure.code, "message": failure.message}, attempts=attempt,
                                  status=failure.status)
        assert isinstance(failure, _Transient)
        last = failure
        log.info("webhook %s try %d: %s", call.tool_call_id, attempt, failure.message)
        if attempt >= settings.max_attempts:
            break
        delay = retry_delay(attempt, base_s=settings.retry_base_s, cap_s=settings.retry_cap_s)
        try:
            wait_or_stop(jittered(delay, min(failure.retry_after, settings.retry_cap_s)
                                  if failure.retry_after is not None else None), should_stop)
        except Stopped:
            return WebhookOutcome(error={"code": STOPPED, "message": "stopped before the next try"},
                                  attempts=attempt)
    assert last is not None
    return WebhookOutcome(error={"code": last.code, "message": f"{last.message} (after {attempt} tries)"},
                          attempts=attempt)


def settings_from_config(config: Any) -> WebhookSettings:
    """Build settings from a Flask config mapping."""
    return WebhookSettings(
        signing_key=str(config.get("WEBHOOK_SIGNING_KEY") or "").encode(),
        allowed_hosts=parse_allowed_hosts(config.get("WEBHOOK_ALLOWED_HOSTS")),
        max_attempts=int(config.get("WEBHOOK_MAX_ATTEMPTS", 4)),
        retry_base_s=float(config.get("WEBHOOK_RETRY_BASE_S", 0.5)),
        retry_cap_s=float(config.get("WEBHOOK_RETRY_CAP_S", 8.0)),
    )
