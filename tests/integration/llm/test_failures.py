"""Failure mapping over real sockets: statuses, drops, resets, stalls, stop requests, key hygiene."""

from __future__ import annotations

import logging
import socket
import time
import traceback

import pytest

from app.llm import FatalProviderError, ProviderError, Stopped, Timeouts, TransientProviderError, get_provider
from tests.integration.llm.helpers import FLAVOURS, KEY, Outcome, drain, provider_for
from tests.support.fake_llm_servers import Behaviour, FakeLLMServer


def assert_no_key(error: BaseException) -> None:
    """The key must not appear anywhere an exception is rendered."""
    rendered = "".join(traceback.format_exception(error))
    for text in (str(error), repr(error), rendered, str(error.args)):
        assert KEY not in text
    assert error.__cause__ is None


@pytest.mark.parametrize("name", FLAVOURS)
def test_429_is_transient_with_retry_after(name: str, fake_llm_server: FakeLLMServer) -> None:
    fake_llm_server.behave(Behaviour(status=429, error_message="Rate limit reached", retry_after="3"))
    with pytest.raises(TransientProviderError) as info:
        drain(provider_for(name, fake_llm_server))
    assert info.value.code == "rate_limited"
    assert info.value.status == 429
    assert info.value.retry_after == 3.0
    assert "Rate limit reached" in info.value.message
    assert_no_key(info.value)


@pytest.mark.parametrize("name", FLAVOURS)
@pytest.mark.parametrize("status", [500, 503, 529])
def test_5xx_is_transient(name: str, status: int, fake_llm_server: FakeLLMServer) -> None:
    fake_llm_server.behave(Behaviour(status=status, error_message="upstream exploded"))
    with pytest.raises(TransientProviderError) as info:
        drain(provider_for(name, fake_llm_server))
    assert info.value.status == status
    assert "upstream exploded" in info.value.message


@pytest.mark.parametrize("name", FLAVOURS)
def test_401_is_fatal_with_the_provider_message_and_no_key(name: str, fake_llm_server: FakeLLMServer) -> None:
    fake_llm_server.api_key = "the-right-key"
    with pytest.raises(FatalProviderError) as info:
        drain(provider_for(name, fake_llm_server))
    assert info.value.code == "auth_failed"
    assert info.value.status == 401
    assert "Incorrect API key provided" in info.value.message  # the upstream echoed our key back...
    assert "[REDACTED]" in info.value.message  # ...and we scrubbed it
    assert_no_key(info.value)


@pytest.mark.parametrize("name", FLAVOURS)
def test_400_is_fatal(name: str, fake_llm_server: FakeLLMServer) -> None:
    fake_llm_server.behave(Behaviour(status=400, error_message="model not found"))
    with pytest.raises(FatalProviderError) as info:
        drain(provider_for(name, fake_llm_server))
    assert info.value.code == "bad_request"
    assert "model not found" in info.value.message


@pytest.mark.parametrize("name", FLAVOURS)
@pytest.mark.parametrize("mode", ["close", "reset"])
def test_connection_dropped_mid_stream_is_transient(name: str, mode: str, fake_llm_server: FakeLLMServer) -> None:
    fake_llm_server.behave(Behaviour(chunks=["a", "b", "c", "d"], drop_at_chunk=2, drop_mode=mode))
    outcome = Outcome()
    with pytest.raises(TransientProviderError) as info:
        drain(provider_for(name, fake_llm_server), outcome=outcome)
    assert outcome.deltas == ["a", "b"]
    assert outcome.usage is None
    assert info.value.code in {"incomplete_stream", "connection_error"}
    assert fake_llm_server.wait_for_outcome() == "dropped"
    assert_no_key(info.value)


@pytest.mark.parametrize("name", FLAVOURS)
def test_stream_ending_without_terminator_is_transient(name: str, fake_llm_server: FakeLLMServer) -> None:
    fake_llm_server.behave(Behaviour(chunks=["a"], finish=False))
    outcome = Outcome()
    with pytest.raises(TransientProviderError) as info:
        drain(provider_for(name, fake_llm_server), outcome=outcome)
    assert info.value.code == "incomplete_stream"
    assert outcome.deltas == ["a"]


def test_openai_finish_reason_without_done_still_completes(fake_llm_server: FakeLLMServer) -> None:
    chunk = '{"choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": "stop"}]}'
    fake_llm_server.behave(Behaviour(raw_body=f"data: {chunk}\n\n"))
    outcome = drain(provider_for("openai", fake_llm_server))
    assert outcome.deltas == ["hi"]
    assert outcome.usage is not None and outcome.usage.estimated


@pytest.mark.parametrize("name", FLAVOURS)
def test_connection_refused_is_transient(name: str) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # bound but never listening: connections are refused
        provider = get_provider(name, api_key=KEY, base_url=f"http://127.0.0.1:{port}/v1", timeouts=Timeouts())
        with pytest.raises(TransientProviderError) as info:
            drain(provider)
    assert info.value.code == "connection_error"


@pytest.mark.parametrize("name", FLAVOURS)
def test_stall_mid_stream_becomes_transient_after_the_read_timeout(name: str, fake_llm_server: FakeLLMServer) -> None:
    fake_llm_server.behave(Behaviour(chunks=["a", "b"], stall_at_chunk=1, stall_s=30))
    outcome = Outcome()
    started = time.monotonic()
    with pytest.raises(TransientProviderError) as info:
        drain(provider_for(name, fake_llm_server, read=0.4), outcome=outcome)
    elapsed = time.monotonic() - started
    assert info.value.code == "timeout"
    assert outcome.deltas == ["a"]
    assert 0.4 <= elapsed < 2.0


@pytest.mark.parametrize("name", FLAVOURS)
def test_stall_before_headers_becomes_transient_after_the_read_timeout(
    name: str, fake_llm_server: FakeLLMServer
) -> None:
    fake_llm_server.behave(Behaviour(stall_before_headers_s=30))
    started = time.monotonic()
    with pytest.raises(TransientProviderError) as info:
        drain(provider_for(name, fake_llm_server, read=0.4))
    assert info.value.code == "timeout"
    assert time.monotonic() - started < 2.0


@pytest.mark.parametrize("name", FLAVOURS)
def test_should_stop_stops_mid_stream_within_one_chunk(name: str, fake_llm_server: FakeLLMServer) -> None:
    fake_llm_server.behave(Behaviour(chunks=[f"w{i} " for i in range(20)], chunk_delay_s=0.1))
    outcome = Outcome()
    with pytest.raises(Stopped):
        drain(provider_for(name, fake_llm_server), outcome=outcome, should_stop=lambda: len(outcome.deltas) >= 3)
    assert outcome.deltas == ["w0 ", "w1 ", "w2 "]
    assert fake_llm_server.wait_for_outcome() == "client_gone"


@pytest.mark.parametrize("name", FLAVOURS)
@pytest.mark.parametrize("where", ["before_headers", "mid_stream"])
def test_should_stop_interrupts_a_stall_within_50ms(name: str, where: str, fake_llm_server: FakeLLMServer) -> None:
    if where == "before_headers":
        fake_llm_server.behave(Behaviour(stall_before_headers_s=30))
    else:
        fake_llm_server.behave(Behaviour(chunks=["a", "b"], stall_at_chunk=1, stall_s=30))
    stop_requested: list[float] = []

    def should_stop() -> bool:
        """Turns True 0.3 s in, remembering when."""
        if not stop_requested and time.monotonic() - started >= 0.3:
            stop_requested.append(time.monotonic())
        return bool(stop_requested)

    started = time.monotonic()
    with pytest.raises(Stopped):
        drain(provider_for(name, fake_llm_server, read=60), should_stop=should_stop)
    assert time.monotonic() - stop_requested[0] < 0.05


@pytest.mark.parametrize("name", FLAVOURS)
def test_abandoning_the_generator_closes_the_upstream(name: str, fake_llm_server: FakeLLMServer) -> None:
    fake_llm_server.behave(Behaviour(chunks=[f"{i}" for i in range(50)], chunk_delay_s=0.05))
    stream = provider_for(name, fake_llm_server).stream(
        system_prompt=None, message="m", model=None, options={}, should_stop=lambda: False, attempt=1
    )
    next(stream)
    stream.close()  # type: ignore[attr-defined]
    assert fake_llm_server.wait_for_outcome() == "client_gone"


@pytest.mark.parametrize("name", FLAVOURS)
def test_overloaded_error_event_mid_stream_is_transient(name: str, fake_llm_server: FakeLLMServer) -> None:
    fake_llm_server.behave(Behaviour(chunks=["a", "b"], stream_error_at_chunk=1, stream_error_type="overloaded_error"))
    outcome = Outcome()
    with pytest.raises(TransientProviderError):
        drain(provider_for(name, fake_llm_server), outcome=outcome)
    assert outcome.deltas == ["a"]


@pytest.mark.parametrize("name", FLAVOURS)
def test_invalid_request_error_event_mid_stream_is_fatal(name: str, fake_llm_server: FakeLLMServer) -> None:
    fake_llm_server.behave(Behaviour(chunks=["a"], stream_error_at_chunk=0, stream_error_type="invalid_request_error"))
    with pytest.raises(FatalProviderError):
        drain(provider_for(name, fake_llm_server))


@pytest.mark.parametrize("name", FLAVOURS)
def test_malformed_event_data_is_fatal_bad_response(name: str, fake_llm_server: FakeLLMServer) -> None:
    fake_llm_server.behave(Behaviour(raw_body="event: content_block_delta\ndata: {not json\n\n"))
    with pytest.raises(FatalProviderError) as info:
        drain(provider_for(name, fake_llm_server))
    assert info.value.code == "bad_response"


@pytest.mark.parametrize("name", FLAVOURS)
def test_json_instead_of_a_stream_is_fatal_bad_response(name: str, fake_llm_server: FakeLLMServer) -> None:
    fake_llm_server.behave(Behaviour(raw_body='{"error": "streaming unsupported"}', content_type="application/json"))
    with pytest.raises(FatalProviderError) as info:
        drain(provider_for(name, fake_llm_server))
    assert info.value.code == "bad_response"
    assert "streaming unsupported" in info.value.message


@pytest.mark.parametrize("name", FLAVOURS)
def test_invalid_options_are_fatal_before_any_request(name: str, fake_llm_server: FakeLLMServer) -> None:
    with pytest.raises(FatalProviderError) as info:
        drain(provider_for(name, fake_llm_server), options={"bogus": 1})
    assert info.value.code == "invalid_options"
    assert fake_llm_server.requests == []


@pytest.mark.parametrize("name", FLAVOURS)
def test_the_key_never_reaches_the_logs(
    name: str, fake_llm_server: FakeLLMServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    fake_llm_server.behave(Behaviour(), Behaviour(status=500), Behaviour(drop_at_chunk=1))
    drain(provider_for(name, fake_llm_server))
    for _ in range(2):
        with pytest.raises(ProviderError):
            drain(provider_for(name, fake_llm_server))
    fake_llm_server.api_key = "other"
    with pytest.raises(ProviderError):
        drain(provider_for(name, fake_llm_server))
    assert caplog.records, "debug logging was captured"
    assert all(KEY not in record.getMessage() for record in caplog.records)
    assert KEY not in caplog.text
