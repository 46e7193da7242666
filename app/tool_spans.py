"""One span per tool call the tool loop runs: `execute_tool {name}` with its governance decision (GenAI conventions)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from app import tracing
from app.llm import traced


@contextmanager
def tool_span(name: str, kind: str, decision: str, *, tool_call_id: str | None = None,
              arguments: Any = None) -> Iterator[trace.Span]:
    """One span per tool call, for the tool loop: `execute_tool {name}` with the governance decision.

    Use: `with tool_span(tool.name, tool.kind, decision.outcome, tool_call_id=call.id) as span: ...`; an exception
    leaving the block marks the span failed. Set `agent_runtime.tool.status` on the span when the call ends
    otherwise (denied, rejected, requires_action). Arguments are recorded only with
    OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true. Tracing off: a non-recording span, nothing paid.
    """
    if not tracing.enabled():
        yield trace.INVALID_SPAN
        return
    attributes: dict[str, Any] = {
        "gen_ai.operation.name": "execute_tool",
        "gen_ai.tool.name": name,
        "gen_ai.tool.type": kind,
        "agent_runtime.tool.kind": kind,
        "agent_runtime.governance.decision": decision,
    }
    if tool_call_id:
        attributes["gen_ai.tool.call.id"] = tool_call_id
    if arguments is not None and traced.capture_content():
        attributes["gen_ai.tool.call.arguments"] = arguments if isinstance(arguments, str) else _json(arguments)
    with tracing.tracer().start_as_current_span(f"execute_tool {name}", kind=SpanKind.INTERNAL, attributes=attributes,
                                       record_exception=False, set_status_on_exception=False) as span:
        try:
            yield span
        except BaseException as exc:
            span.set_attribute("error.type", type(exc).__qualname__)
            span.set_status(Status(StatusCode.ERROR, type(exc).__qualname__))
            raise


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)


# How a call the webhook runner does not run at once was decided, by the status its ledger row starts in.
_DECISIONS = {"denied": "denied", "awaiting_approval": "approval_required", "failed": "invalid"}


def decision_spans(planned: Iterable[Any]) -> None:
    """A span for each call of a turn that no webhook run spans: a client call, one awaiting approval, an ask,
    a denied or invalid one (planned: app.services.tools.plan.PlannedCall), so every call is in the trace."""
    if not tracing.enabled():
        return
    for item in planned:
        status = str(item.status.value)
        if item.kind == "webhook" and status == "pending":
            continue  # run_webhook opens this call's span around its HTTP request
        with tool_span(item.call.name, item.kind, _DECISIONS.get(status, "allowed"), tool_call_id=item.call.id,
                       arguments=item.call.arguments) as span:
            span.set_attribute("agent_runtime.tool.status", status)
