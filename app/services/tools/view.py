"""What GET /executions/{id} adds for the tool loop: turns, the ledger rows, and what a pause waits for."""

from __future__ import annotations

from typing import Any

from app.models import Execution
from app.services.tools import ledger
from app.services.tools.resume import wait_timeout_of


def execution_fields(execution: Execution) -> dict[str, Any]:
    """turns, max_turns, wait_timeout_s, tool_calls, required_action, pending_approval (null when none)."""
    rows = ledger.rows_of(execution.id) if execution.conversation else []  # only tool loops keep a conversation
    return {
        "turns": int(execution.turns or 0),
        "max_turns": int(execution.max_turns or 8),
        "wait_timeout_s": wait_timeout_of(execution),
        "tool_calls": [ledger.serialize(row) for row in rows],
        "required_action": execution.required_action,
        "pending_approval": execution.pending_approval,
    }
