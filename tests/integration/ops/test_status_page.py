"""A person's view: the status page, in headless Chromium, streams an execution's text live, shows the inbox, and
shows tool calls a person approves."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask

from tests.support.api import ApiClient
from tests.support.browser import Browser
from tests.support.web import WebProcess
from tests.support.webhook_receiver import WebhookReceiver
from tests.support.worker import WorkerProcess

STORY = "Streamed all the way into the browser, word by word."
SCREENSHOT_DIR = Path(__file__).resolve().parents[2] / "artifacts"


@pytest.fixture(scope="module")
def web(pg_url: str, broker_url: str, redis_url: str, worker: WorkerProcess,
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebProcess]:
    process = WebProcess(database_url=pg_url, broker_url=broker_url, redis_url=redis_url,
                         log_path=tmp_path_factory.mktemp("web") / "web.log")
    process.start()
    yield process
    process.stop()


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_page_streams_an_execution_live(web: WebProcess, wapi: ApiClient) -> None:
    agent = wapi.create_agent(name="storyteller",
                              llm={"provider": "scripted", "options": {"text": STORY, "chunk_delay_ms": 80}})
    sender = wapi.create_agent(name="friend")
    sent = wapi.post(f"/agents/{sender['id']}/messages", json={"to_agent_id": agent["id"], "message": "hi there"})
    assert sent.status_code == 201

    SCREENSHOT_DIR.mkdir(exist_ok=True)
    with Browser() as browser:
        browser.navigate(f"{web.url}/#key={wapi.key}&agent={agent['id']}&message=tell+me&run=1")
        # Mid-stream: some words are on the page before the execution has finished.
        partial = browser.wait_for(
            "(() => { const t = document.getElementById('output').textContent;"
            f" return t.length > 0 && t.length < {len(STORY)} && t; }})()", timeout=30)
        assert STORY.startswith(partial)
        browser.wait_for("document.getElementById('status').textContent === 'completed'", timeout=30)
        assert browser.evaluate("document.getElementById('output').textContent") == STORY
        browser.wait_for("document.getElementById('inbox').textContent.includes('hi there')", timeout=10)
        assert "key=" not in browser.evaluate("location.href")
        shot = browser.screenshot(SCREENSHOT_DIR / "status-page.png")
    width, height = png_size(shot)
    assert width == 1200 and height > 500
    assert len(shot) > 10_000  # a rendered page, not a blank frame


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
