"""The webhook client against a real HTTP receiver on loopback: signing, idempotent retries, limits, SSRF guard."""

from __future__ import annotations

import json
import time

import pytest

from app.services.tools.webhook import WebhookCall, WebhookSettings, call_webhook, signature
from tests.support.webhook_receiver import SIGNING_KEY, Reply, WebhookReceiver

LOOPBACK = frozenset({"127.0.0.1"})


def _settings(**overrides: object) -> WebhookSettings:
    values: dict[str, object] = {"signing_key": SIGNING_KEY.encode(), "allowed_hosts": LOOPBACK, "max_attempts": 4,
                                 "retry_base_s": 0.01, "retry_cap_s": 0.05}
    values.update(overrides)
    return WebhookSettings(**values)  # type: ignore[arg-type]


def _call(url: str, tool_call_id: str = "call_1", timeout_s: float = 5.0) -> WebhookCall:
    return WebhookCall(url=url, execution_id="exec-1", agent_id="agent-1", tool_call_id=tool_call_id,
                       name="get_weather", arguments={"city": "Oslo", "note": "ø"}, timeout_s=timeout_s)


def test_signed_post_with_idempotency_key(webhook_receiver: WebhookReceiver) -> None:
    outcome = call_webhook(_call(webhook_receiver.url), _settings())
    assert outcome.ok and outcome.attempts == 1 and outcome.status == 200
    assert outcome.output == {"ok": True, "name": "get_weather", "arguments": {"city": "Oslo", "note": "ø"}}
    (request,) = webhook_receiver.received
    assert request.signature_ok
    assert request.headers["x-signature"] == signature(SIGNING_KEY.encode(), request.raw)
    assert request.headers["idempotency-key"] == "call_1"
    assert request.headers["content-type"] == "application/json"
    assert request.path == "/hook"
    assert request.body == {"execution_id": "exec-1", "agent_id": "agent-1", "tool_call_id": "call_1",
                            "name": "get_weather", "arguments": {"city": "Oslo", "note": "ø"}}


def test_a_wrong_key_fails_the_receivers_check(webhook_receiver: WebhookReceiver) -> None:
    call_webhook(_call(webhook_receiver.url), _settings(signing_key=b"someone-else"))
    assert not webhook_receiver.received[0].signature_ok


@pytest.mark.parametrize("failure", [Reply(status=500), Reply(status=503), Reply(status=429), Reply(drop=True)])
def test_transient_failures_are_retried_with_the_same_key(webhook_receiver: WebhookReceiver, failure: Reply) -> None:
    webhook_receiver.behave(failure, failure, Reply())
    outcome = call_webhook(_call(webhook_receiver.url, "call_retry"), _settings())
    assert outcome.ok and outcome.attempts == 3
    assert webhook_receiver.per_key == {"call_retry": 3}
    assert webhook_receiver.effects == {"call_retry": 1}
    assert all(request.signature_ok for request in webhook_receiver.received)


def test_retries_stop_after_max_attempts(webhook_receiver: WebhookReceiver) -> None:
    webhook_receiver.behave(Reply(status=502, body={"error": {"message": "bad gateway"}}))
    outcome = call_webhook(_call(webhook_receiver.url), _settings(max_attempts=3))
    assert outcome.error == {"code": "http_error", "message": "HTTP 502: bad gateway (after 3 tries)"}
    assert webhook_receiver.per_key == {"call_1": 3}


@pytest.mark.parametrize("status", [400, 401, 404, 409, 422])
def test_other_4xx_are_final(webhook_receiver: WebhookReceiver, status: int) -> None:
    webhook_receiver.behave(Reply(status=status, body={"message": "no such city"}))
    outcome = call_webhook(_call(webhook_receiver.url), _settings())
    assert outcome.error == {"code": "http_error", "message": f"HTTP {status}: no such city"}
    assert outcome.status == status and outcome.attempts == 1


def test_retry_after_is_honoured(webhook_receiver: WebhookReceiver) -> None:
    webhook_receiver.behave(Reply(status=429, retry_after="1"), Reply())
    started = time.monotonic()
    outcome = call_webhook(_call(webhook_receiver.url), _settings(retry_cap_s=2.0))
    assert outcome.ok and time.monotonic() - started >= 1.0


def test_each_try_is_bounded_by_timeout_s(webhook_receiver: WebhookReceiver) -> None:
    webhook_receiver.behave(Reply(delay_s=3.0), Reply())
    started = time.monotonic()
    outcome = call_webhook(_call(webhook_receiver.url, timeout_s=0.3), _settings())
    assert outcome.ok and outcome.attempts == 2
    assert time.monotonic() - started < 2.0
    assert webhook_receiver.per_key == {"call_1": 2}


def test_answers_over_1_mib_are_cut_off(webhook_receiver: WebhookReceiver) -> None:
    webhook_receiver.behave(Reply(size=8 * 1024 * 1024))
    outcome = call_webhook(_call(webhook_receiver.url), _settings())
    assert outcome.error is not None and outcome.error["code"] == "answer_too_large"
    assert outcome.attempts == 1
    assert webhook_receiver.bytes_sent < 8 * 1024 * 1024


def test_an_answer_with_content_length_over_the_cap_is_not_read(webhook_receiver: WebhookReceiver) -> None:
    webhook_receiver.behave(Reply(raw=json.dumps("y" * (1024 * 1024 + 10)).encode()))
    outcome = call_webhook(_call(webhook_receiver.url), _settings())
    assert outcome.error is not None and outcome.error["code"] == "answer_too_large"


def test_non_json_answers_are_an_error(webhook_receiver: WebhookReceiver) -> None:
    webhook_receiver.behave(Reply(raw=b"<html>hi</html>"))
    outcome = call_webhook(_call(webhook_receiver.url), _settings())
    assert outcome.error == {"code": "bad_answer", "message": "answer is not JSON: <html>hi</html>"}


def test_loopback_is_refused_at_call_time_unless_allowed(webhook_receiver: WebhookReceiver) -> None:
    outcome = call_webhook(_call(webhook_receiver.url), _settings(allowed_hosts=frozenset()))
    assert outcome.error is not None and outcome.error["code"] == "forbidden_address"
    assert webhook_receiver.received == []


def test_a_name_resolving_to_a_private_address_is_refused(webhook_receiver: WebhookReceiver) -> None:
    lookups: list[str] = []

    def resolver(host: str, port: int) -> list[str]:
        lookups.append(host)
        return ["93.184.216.34", "127.0.0.1"]

    url = f"http://hooks.example.com:{webhook_receiver.port}/hook"
    outcome = call_webhook(_call(url), _settings(allowed_hosts=frozenset()), resolver=resolver)
    assert outcome.error is not None and outcome.error["code"] == "forbidden_address"
    assert "resolves to 127.0.0.1, a loopback address" in outcome.error["message"]
    assert lookups == ["hooks.example.com"]
    assert webhook_receiver.received == []


def test_the_connection_goes_to_the_checked_address(webhook_receiver: WebhookReceiver) -> None:
    """Resolved once, connected to that IP, Host header kept: a second DNS answer cannot redirect the socket."""
    answers = iter([["127.0.0.1"], ["10.0.0.1"]])
    lookups: list[str] = []

    def rebinding_resolver(host: str, port: int) -> list[str]:
        lookups.append(host)
        return next(answers)

    url = f"http://hooks.internal:{webhook_receiver.port}/hook?x=1"
    outcome = call_webhook(_call(url), _settings(allowed_hosts=frozenset({"127.0.0.1"})),
                           resolver=rebinding_resolver)
    assert outcome.ok, outcome.error
    assert lookups == ["hooks.internal"]
    (request,) = webhook_receiver.received
    assert request.headers["host"] == f"hooks.internal:{webhook_receiver.port}"
    assert request.path == "/hook?x=1"


def test_an_allowed_name_may_resolve_to_loopback(webhook_receiver: WebhookReceiver) -> None:
    url = f"http://hooks.internal:{webhook_receiver.port}/hook"
    outcome = call_webhook(_call(url), _settings(allowed_hosts=frozenset({"hooks.internal"})),
                           resolver=lambda host, port: ["127.0.0.1"])
    assert outcome.ok


def test_connection_refused_is_retried_then_reported() -> None:
    with WebhookReceiver() as receiver:
        url = receiver.url
    outcome = call_webhook(_call(url), _settings(max_attempts=2))
    assert outcome.error is not None and outcome.error["code"] == "connection_error"
    assert outcome.attempts == 2


def test_stop_during_backoff_ends_the_call(webhook_receiver: WebhookReceiver) -> None:
    webhook_receiver.behave(Reply(status=503))
    stop_at = time.monotonic() + 0.2
    outcome = call_webhook(_call(webhook_receiver.url), _settings(retry_base_s=5.0, retry_cap_s=5.0),
                           should_stop=lambda: time.monotonic() > stop_at)
    assert outcome.error is not None and outcome.error["code"] == "stopped"
    assert webhook_receiver.per_key == {"call_1": 1}
