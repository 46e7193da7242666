"""A person approves a tool call from the status page, in headless Chromium, and sees it run."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from flask import Flask

from tests.support.api import ApiClient
from tests.support.browser import Browser
from tests.support.web import WebProcess
from tests.support.webhook_receiver import WebhookReceiver
from tests.support.worker import WorkerProcess


@pytest.fixture(scope="module")
def web(pg_url: str, broker_url: str, redis_url: str, worker: WorkerProcess,
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebProcess]:
    process = WebProcess(database_url=pg_url, broker_url=broker_url, redis_url=redis_url,
                         log_path=tmp_path_factory.mktemp("web") / "web.log")
    process.start()
    yield process
    process.stop()


def test_page_shows_tool_calls_and_approves(web: WebProcess, wapi: ApiClient, pg_app: Flask,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(pg_app.config, "WEBHOOK_ALLOWED_HOSTS", "127.0.0.1")
    with WebhookReceiver() as receiver:
        tool = {"name": "open_ticket", "action": "create", "kind": "webhook", "url": receiver.url}
        turns = [{"tool_calls": [{"name": "open_ticket", "arguments": {"title": "printer"}}]}, {"text": "Opened."}]
        agent = wapi.create_agent(name="helpdesk", maturity_level="INTERN", tools=[tool],
                                  llm={"provider": "scripted", "options": {"turns": turns}})
        with Browser() as browser:
            browser.navigate(f"{web.url}/#key={wapi.key}&agent={agent['id']}&message=help&run=1")
            browser.wait_for("document.getElementById('status').textContent === 'awaiting_approval'", timeout=30)
            browser.wait_for("getComputedStyle(document.getElementById('decide')).display === 'block'", timeout=10)
            assert "open_ticket" in browser.evaluate("document.getElementById('calls').textContent")
            assert receiver.received == []
            browser.evaluate("document.getElementById('approve').click()")
            browser.wait_for("document.getElementById('status').textContent === 'completed'", timeout=30)
            browser.wait_for("document.getElementById('calls').textContent.includes('completed')", timeout=10)
            assert browser.evaluate("document.getElementById('output').textContent") == "Opened."
        assert len(receiver.received) == 1
