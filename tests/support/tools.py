"""Tool-loop test helpers: tool declarations, an agent scripted turn by turn, and loopback webhooks allowed."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from flask import Flask

from tests.support.api import ApiClient
from tests.support.webhook_receiver import WebhookReceiver


@pytest.fixture
def loopback_webhooks(pg_app: Flask, monkeypatch: pytest.MonkeyPatch) -> None:
    """The API admits the test receivers' loopback URLs (the worker has the same setting, tests/support/worker.py)."""
    monkeypatch.setitem(pg_app.config, "WEBHOOK_ALLOWED_HOSTS", "127.0.0.1")


def call_id() -> str:
    return f"call_{uuid.uuid4().hex[:16]}"


def webhook_tool(receiver: WebhookReceiver, name: str = "lookup", action: str = "read") -> dict[str, Any]:
    return {"name": name, "description": "look something up", "action": action, "kind": "webhook",
            "url": receiver.url, "timeout_s": 5,
            "parameters": {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}}


def client_tool(name: str = "confirm", action: str = "chat") -> dict[str, Any]:
    return {"name": name, "action": action, "kind": "client"}


def tool_agent(api: ApiClient, tools: list[dict[str, Any]], turns: list[dict[str, Any]],
               maturity: str = "AUTONOMOUS") -> dict[str, Any]:
    return api.create_agent(maturity_level=maturity, tools=tools,
                            llm={"provider": "scripted", "options": {"turns": turns}})
