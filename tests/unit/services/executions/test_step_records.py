"""What the steps write besides the status: the terminal event's shape, the audit rows of each outcome."""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import pytest

from app.models import ExecutionStatus
from app.services.executions.events import terminal_event
from app.services.executions.llm_step import _started_audit
from app.services.executions.persist_step import OUTCOME_AUDIT
from app.services.executions.step_support import skipped, step_record


@dataclass
class Row:
    id: str = "e1"
    status: str = "completed"
    output: str | None = "hello"
    error_code: str | None = None
    error_message: str | None = None
    prompt_tokens: int = 3
    completion_tokens: int = 5
    attempts: int = 1


def test_a_completed_execution_ends_with_its_output_usage_and_attempts() -> None:
    assert terminal_event(Row()) == ("completed", {
        "execution_id": "e1", "status": "completed", "output": "hello",
        "usage": {"prompt_tokens": 3, "completion_tokens": 5}, "attempts": 1})


def test_a_denied_execution_ends_with_its_reason() -> None:
    event = terminal_event(Row(status="denied", error_code="rejected", error_message="rejected by key:1"))
    assert event == ("denied", {"execution_id": "e1", "status": "denied", "reason": "rejected by key:1"})


@pytest.mark.parametrize("status", ["failed", "cancelled", "timed_out"])
def test_other_ends_carry_the_error_and_attempts(status: str) -> None:
    name, data = terminal_event(Row(status=status, error_code="x", error_message="why", attempts=2))
    assert name == status and data["error"] == {"code": "x", "message": "why"} and data["attempts"] == 2


def test_every_outcome_of_the_llm_step_has_its_audit_rows() -> None:
    outcomes = {"completed", "failed", "cancelled", "timed_out"}  # what llm_step.run can hand on
    assert set(OUTCOME_AUDIT) == outcomes
    assert all(ExecutionStatus(outcome).terminal for outcome in outcomes)
    assert [action for action, _ in OUTCOME_AUDIT["completed"]][-1] == "execution.completed"


def test_the_first_run_is_audited_started_and_a_restart_retried() -> None:
    first = _started_audit(SimpleNamespace(attempts=1))  # type: ignore[arg-type]
    again = _started_audit(SimpleNamespace(attempts=3))  # type: ignore[arg-type]
    assert [(a.action, a.details) for a in first] == [("llm.started", {"attempt": 1})]
    assert [(a.action, a.details) for a in again] == [
        ("llm.retried", {"attempt": 3, "reason": "restarted after a lost worker"})]


def test_a_skip_is_passed_on_and_a_step_record_is_stamped() -> None:
    assert skipped("e1", "denied") == {"execution_id": "e1", "skip": "denied"}
    record = step_record("llm", "completed", "2026-01-01T00:00:00Z")
    assert record["name"] == "llm" and record["status"] == "completed" and record["finished_at"]
