"""The execution state machine's table: every allowed and every refused transition, and its invariants."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.models import ExecutionStatus
from app.services.executions.state import INITIAL, TRANSITIONS, can_move, sources_of

S = ExecutionStatus
TERMINAL = [status for status in S if status.terminal]
ALLOWED = {
    (S.PENDING, S.RUNNING), (S.PENDING, S.AWAITING_APPROVAL), (S.PENDING, S.DENIED), (S.PENDING, S.CANCELLED),
    (S.PENDING, S.FAILED), (S.PENDING, S.TIMED_OUT),
    (S.AWAITING_APPROVAL, S.PENDING), (S.AWAITING_APPROVAL, S.RUNNING), (S.AWAITING_APPROVAL, S.DENIED),
    (S.AWAITING_APPROVAL, S.CANCELLED), (S.AWAITING_APPROVAL, S.FAILED), (S.AWAITING_APPROVAL, S.TIMED_OUT),
    (S.RUNNING, S.RUNNING), (S.RUNNING, S.REQUIRES_ACTION), (S.RUNNING, S.WAITING),
    (S.RUNNING, S.AWAITING_APPROVAL), (S.RUNNING, S.PENDING), (S.RUNNING, S.COMPLETED), (S.RUNNING, S.FAILED),
    (S.RUNNING, S.CANCELLED), (S.RUNNING, S.TIMED_OUT),
    (S.REQUIRES_ACTION, S.PENDING), (S.REQUIRES_ACTION, S.RUNNING), (S.REQUIRES_ACTION, S.CANCELLED),
    (S.REQUIRES_ACTION, S.FAILED), (S.REQUIRES_ACTION, S.TIMED_OUT),
    (S.WAITING, S.PENDING), (S.WAITING, S.RUNNING), (S.WAITING, S.CANCELLED), (S.WAITING, S.FAILED),
    (S.WAITING, S.TIMED_OUT),
}


@pytest.mark.parametrize(("source", "target"), list(itertools.product(S, S)),
                         ids=lambda status: status.value)
def test_each_pair_is_allowed_exactly_when_listed(source: ExecutionStatus, target: ExecutionStatus) -> None:
    assert can_move(source, target) == ((source, target) in ALLOWED)


def test_the_table_names_every_status() -> None:
    assert set(TRANSITIONS) == set(S)


@pytest.mark.parametrize("terminal", TERMINAL, ids=lambda status: status.value)
def test_a_terminal_status_leads_nowhere(terminal: ExecutionStatus) -> None:
    assert TRANSITIONS[terminal] == frozenset()


def test_every_non_terminal_status_can_be_cancelled_failed_and_timed_out() -> None:
    for status in S:
        if not status.terminal:
            assert {S.CANCELLED, S.FAILED, S.TIMED_OUT} <= TRANSITIONS[status], status


def test_only_a_running_execution_completes() -> None:
    assert sources_of(S.COMPLETED) == {S.RUNNING}


def test_new_executions_start_pending_awaiting_approval_or_denied() -> None:
    assert INITIAL == {S.PENDING, S.AWAITING_APPROVAL, S.DENIED}


@given(st.lists(st.sampled_from(list(S)), max_size=30))
def test_following_the_table_reaches_at_most_one_terminal_status(requests: list[ExecutionStatus]) -> None:
    """Apply random requested moves the way move() does (refused ones change nothing): once terminal, stays."""
    status = S.PENDING
    terminals = []
    for target in requests:
        if can_move(status, target):
            status = target
            if status.terminal:
                terminals.append(status)
    assert len(terminals) <= 1
    if terminals:
        assert status == terminals[0]
