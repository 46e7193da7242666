"""Every call of a turn has a span with its governance decision, not only the webhook calls that run at once."""

from __future__ import annotations

from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from app import tool_spans
from app.llm.base import ToolCall
from app.services.tools.plan import plan_turn

TOOLS = [{"name": "lookup", "action": "read", "kind": "webhook", "url": "https://example.org/hook"},
         {"name": "confirm", "action": "chat", "kind": "client"},
         {"name": "pay", "action": "payment", "kind": "webhook", "url": "https://example.org/pay"},
         {"name": "ask", "action": "chat", "kind": "agent", "agent_id": "a1"}]


def test_each_call_not_run_at_once_gets_a_decision_span(span_exporter: InMemorySpanExporter) -> None:
    calls = [ToolCall(id="c1", name="lookup", arguments={}), ToolCall(id="c2", name="confirm", arguments={}),
             ToolCall(id="c3", name="pay", arguments={"card": "4111"}), ToolCall(id="c4", name="ask", arguments={}),
             ToolCall(id="c5", name="nope", arguments={})]
    planned = plan_turn(calls, TOOLS, maturity_level="INTERN", agent_status="active")
    tool_spans.decision_spans(planned)
    spans = {dict(span.attributes or {})["gen_ai.tool.call.id"]: dict(span.attributes or {})
             for span in span_exporter.get_finished_spans()}
    assert "c1" not in spans  # the webhook runner spans it around its request
    assert spans["c2"]["agent_runtime.tool.status"] == "requires_action"
    assert spans["c3"]["agent_runtime.governance.decision"] == "denied"
    assert "gen_ai.tool.call.arguments" not in spans["c3"]
    assert spans["c4"]["agent_runtime.tool.kind"] == "agent"
    assert spans["c5"]["agent_runtime.governance.decision"] == "invalid"
