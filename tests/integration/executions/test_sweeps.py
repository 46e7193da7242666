"""The workers' sweeps, called directly on a real database (one of its own) and Redis: never-queued pending
executions get their chain, abandoned running ones end `failed` once; live ones are left alone."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import update

from app.extensions import db
from app.models import Execution
from app.services.executions import sweeps
from app.services.executions.events import event_log
from app.timeutil import utcnow
from tests.support.api import ApiClient, new_workspace_client
from tests.support.own_database import own_database_app, record_execution
from tests.support.sse import parse


def _age(app: Flask, execution_id: str, seconds: float, **values: Any) -> None:
    with app.app_context():
        db.session.execute(update(Execution).where(Execution.id == execution_id)
                           .values(created_at=utcnow() - timedelta(seconds=seconds), **values))
        db.session.commit()


@pytest.fixture
def pg_app(broker_url: str, redis_url: str) -> Iterator[Flask]:
    """A database of its own: the session's worker sweeps every pending execution of the shared one."""
    with own_database_app("sweeps", broker_url, redis_url) as app:
        yield app


@pytest.fixture
def scripted(pg_app: Flask) -> tuple[ApiClient, str]:
    api = new_workspace_client(pg_app)
    return api, api.create_agent(llm={"provider": "scripted"})["id"]


def test_only_never_queued_pending_executions_are_requeued(pg_app: Flask, scripted: tuple[ApiClient, str]) -> None:
    api, agent_id = scripted
    sent: list[tuple[str, list[str]]] = []
    queued = record_execution(pg_app, api, agent_id, lambda *args: None)  # confirmed: the web marked it queued
    lost = record_execution(pg_app, api, agent_id, lambda *args: None)
    with pg_app.app_context():
        event_log().unmark_queued(lost)  # as if the web died before the confirm
    recent = record_execution(pg_app, api, agent_id, lambda *args: None)
    with pg_app.app_context():
        event_log().unmark_queued(recent)  # never queued either, but younger than the grace
    for execution_id in (queued, lost):
        _age(pg_app, execution_id, 120)
    with pg_app.app_context():
        first = sweeps.requeue_stranded(lambda *args: sent.append(args), older_than_s=60, limit=100)
        second = sweeps.requeue_stranded(lambda *args: sent.append(args), older_than_s=60, limit=100)
        stored_task_ids = db.session.get(Execution, lost).task_ids
    mine = {queued, lost, recent}
    assert [e for e in first if e in mine] == [lost] and not [e for e in second if e in mine]
    # Sent once (the claim makes a second sweep, or a second worker, skip it), with the ids cancel revokes.
    assert [args for args in sent if args[0] in mine] == [(lost, stored_task_ids)]


def test_a_backlog_of_queued_pending_executions_hides_no_stranded_one(pg_app: Flask,
                                                                      scripted: tuple[ApiClient, str]) -> None:
    """Older executions still pending and marked queued (an admission backlog) fill every page before the one
    that was never queued: the sweep pages through them and sends that one."""
    api, agent_id = scripted
    backlog = [record_execution(pg_app, api, agent_id, lambda *args: None) for _ in range(5)]  # marked queued
    lost = record_execution(pg_app, api, agent_id, lambda *args: None)
    with pg_app.app_context():
        event_log().unmark_queued(lost)
    for age, execution_id in zip(range(200, 100, -10), [*backlog, lost], strict=False):
        _age(pg_app, execution_id, age)  # the backlog is older: first in created_at order
    sent: list[tuple[str, list[str]]] = []
    with pg_app.app_context():
        requeued = sweeps.requeue_stranded(lambda *args: sent.append(args), older_than_s=60, limit=100, page=2)
    assert lost in requeued and not set(backlog) & set(requeued)
    assert [args[0] for args in sent if args[0] in {lost, *backlog}] == [lost]


def test_abandoned_running_executions_end_failed_once(pg_app: Flask, scripted: tuple[ApiClient, str]) -> None:
    api, agent_id = scripted
    abandoned = record_execution(pg_app, api, agent_id, lambda *args: None)
    leased = record_execution(pg_app, api, agent_id, lambda *args: None)
    in_time = record_execution(pg_app, api, agent_id, lambda *args: None)
    long_ago = utcnow() - timedelta(hours=2)
    for execution_id in (abandoned, leased):
        _age(pg_app, execution_id, 7200, status="running", started_at=long_ago, attempts=1)
    _age(pg_app, in_time, 7200, status="running", started_at=utcnow(), attempts=1)  # still within timeout_s
    with pg_app.app_context():
        event_log().claim_run(leased, "live-run", 60_000)  # an LLM run still streaming it
        ended = sweeps.end_abandoned(grace_s=600, limit=100)
        again = sweeps.end_abandoned(grace_s=600, limit=100)
    mine = {abandoned, leased, in_time}
    assert [e for e in ended if e in mine] == [abandoned] and not [e for e in again if e in mine]
    row = api.get(f"/executions/{abandoned}").get_json()
    assert row["status"] == "failed" and row["error"]["code"] == "internal_error"
    assert [api.get(f"/executions/{e}").get_json()["status"] for e in (leased, in_time)] == ["running", "running"]
    stream = parse(api.get(f"/executions/{abandoned}/events").get_data(as_text=True))
    assert [event.event for event in stream if event.event == "failed"] == ["failed"]
    audit = api.get("/audit", query_string={"execution_id": abandoned}).get_json()["items"]
    failed = [item for item in audit if item["action"] == "execution.failed"]
    assert len(failed) == 1 and failed[0]["details"] == {"reason": "abandoned"} and failed[0]["actor"] == "sweeper"
