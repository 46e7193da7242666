"""Structured JSON logs: one object per line, carrying the ids of the work in hand and never a secret."""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

from flask import Flask, Response, request
from opentelemetry import trace

CONTEXT_KEYS = ("request_id", "workspace_id", "agent_id", "execution_id", "message_id", "task_id")
_context: ContextVar[dict[str, str]] = ContextVar("log_context", default={})  # noqa: B039 - never mutated

# API keys, provider keys and bearer tokens, should one ever be formatted into a message by mistake.
SECRET_PATTERNS = re.compile(
    r"(ar_[A-Za-z0-9_\-]{16,}|sk-[A-Za-z0-9_\-]{16,}|(?i:bearer)\s+[A-Za-z0-9_\-\.=]{16,}|gAAAAA[A-Za-z0-9_\-=]{20,})"
)


def scrub(text: str) -> str:
    return SECRET_PATTERNS.sub("[REDACTED]", text)


@contextmanager
def log_context(**ids: str | None) -> Iterator[None]:
    """Attach ids (execution_id, message_id, ...) to every line logged inside the block."""
    token = _context.set({**_context.get(), **{k: v for k, v in ids.items() if v}})
    try:
        yield
    finally:
        _context.reset(token)


def bind(**ids: str | None) -> None:
    """Attach ids for the rest of the current context (a request or a task)."""
    _context.set({**_context.get(), **{k: v for k, v in ids.items() if v}})


def clear() -> None:
    _context.set({})


class JsonFormatter(logging.Formatter):
    """Render a record as one JSON object, with context ids and any `extra=` ids."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace(
                "+00:00", "Z"
            ),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": scrub(record.getMessage()),
            "process": record.process,
        }
        entry.update(_context.get())
        span = trace.get_current_span().get_span_context()  # tracing off: the invalid span, one lookup
        if span.is_valid:
            entry["trace_id"] = format(span.trace_id, "032x")
            entry["span_id"] = format(span.span_id, "016x")
        for key in CONTEXT_KEYS:
            value = getattr(record, key, None)
            if value:
                entry[key] = value
        if record.exc_info:
            entry["exc"] = scrub(self.formatException(record.exc_info))
        return json.dumps(entry, default=str)


def configure_logging(level: str | None = None) -> None:
    """Install the JSON formatter on the root logger once per process."""
    root = logging.getLogger()
    if any(isinstance(h.formatter, JsonFormatter) for h in root.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root.handlers[:] = [handler]
    root.setLevel(level or os.environ.get("LOG_LEVEL", "INFO"))
    for noisy in ("amqp", "kombu", "urllib3", "httpx", "httpcore", "alembic.runtime.plugins"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _start_request(_endpoint: str | None, values: dict[str, Any] | None) -> None:
    """A fresh context per request (Flask runs this first); lines name the execution or agent in the URL."""
    clear()
    bind(request_id=request.headers.get("X-Request-Id") or uuid.uuid4().hex)
    if values:
        bind(execution_id=values.get("execution_id"), agent_id=values.get("agent_id"))


def _echo_request_id(response: Response) -> Response:
    response.headers["X-Request-Id"] = _context.get().get("request_id", "")
    return response


def register_logging(app: Flask) -> None:
    """JSON logs for every process that builds the app (web, worker, mailbox, CLI)."""
    # Under TESTING the test runner owns the root logger (pytest's caplog); the JSON formatter is unit-tested.
    if not app.config.get("TESTING") and app.config.get("LOG_FORMAT", os.environ.get("LOG_FORMAT", "json")) == "json":
        configure_logging()
    app.url_value_preprocessor(_start_request)
    app.after_request(_echo_request_id)
