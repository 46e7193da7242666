"""Log lines are JSON objects with the context ids, and secrets never reach them."""

from __future__ import annotations

import json
import logging

from app.logs import JsonFormatter, clear, log_context, scrub


def render(message: str, *args: object, **extra: object) -> dict[str, object]:
    record = logging.LogRecord("t", logging.INFO, __file__, 1, message, args, None)
    for key, value in extra.items():
        setattr(record, key, value)
    result: dict[str, object] = json.loads(JsonFormatter().format(record))
    return result


def test_context_ids_are_on_every_line() -> None:
    clear()  # an in-process request of an earlier test leaves its ids bound in this thread's context
    with log_context(execution_id="e1", task_id="t1"):
        line = render("step %s", "llm")
    assert line["msg"] == "step llm"
    assert line["execution_id"] == "e1"
    assert line["task_id"] == "t1"
    assert "execution_id" not in render("outside")


def test_extra_ids_are_kept() -> None:
    assert render("stored", message_id="m1")["message_id"] == "m1"


def test_secrets_are_scrubbed() -> None:
    key = "ar_" + "x" * 40
    provider_key = "sk-" + "y" * 40
    line = render("auth with %s and %s, header Bearer %s", key, provider_key, "z" * 30)
    assert key not in str(line)
    assert provider_key not in str(line)
    assert "z" * 30 not in str(line)
    assert scrub("nothing secret") == "nothing secret"


def test_request_lines_name_the_execution_in_the_url() -> None:
    from flask import Flask

    from app.logs import _context, register_logging

    app = Flask(__name__)
    register_logging(app)
    seen: dict[str, str] = {}

    @app.get("/executions/<execution_id>")
    def view(execution_id: str) -> str:
        seen.update(_context.get())
        return "ok"

    response = app.test_client().get("/executions/e-42", headers={"X-Request-Id": "r-1"})
    assert response.headers["X-Request-Id"] == "r-1"
    assert seen["execution_id"] == "e-42"
    assert seen["request_id"] == "r-1"
