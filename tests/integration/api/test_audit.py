"""Audit rows are written with each change, filterable, and their hash chain detects tampering."""

from __future__ import annotations

from flask import Flask
from sqlalchemy import text

from app.extensions import db
from tests.support.api import ApiClient


def actions(api: ApiClient, **query: str) -> list[str]:
    return [row["action"] for row in api.get("/audit", query_string=query).get_json()["items"]]


def test_changes_are_audited_in_order(api: ApiClient) -> None:
    agent = api.create_agent()
    api.patch(f"/agents/{agent['id']}", json={"name": "renamed"})
    api.delete(f"/agents/{agent['id']}")
    assert actions(api) == ["agent.deleted", "agent.updated", "agent.created", "key.created"]
    assert actions(api, agent_id=agent["id"]) == ["agent.deleted", "agent.updated", "agent.created"]
    assert actions(api, action="agent.updated") == ["agent.updated"]
    row = api.get("/audit", query_string={"action": "agent.updated"}).get_json()["items"][0]
    assert row["details"]["changes"]["name"]["to"] == "renamed"
    assert row["actor"].startswith("key:")
    assert row["result"] == "ok"


def test_chain_verifies_and_paginates(api: ApiClient) -> None:
    for i in range(5):
        api.create_agent(name=f"n{i}")
    first = api.get("/audit", query_string={"limit": 4}).get_json()
    second = api.get("/audit", query_string={"limit": 4, "cursor": first["next_cursor"]}).get_json()
    assert second["next_cursor"] is None
    rows = first["items"] + second["items"]
    assert len(rows) == 6
    assert [r["id"] for r in rows] == sorted((r["id"] for r in rows), reverse=True)
    chronological = list(reversed(rows))
    for before, after in zip(chronological, chronological[1:], strict=False):
        assert after["prev_hash"] == before["hash"]
    assert api.get("/audit/verify").get_json() == {"ok": True, "checked": 6, "first_bad_id": None}


def test_tenancy_of_audit(api: ApiClient, other_api: ApiClient) -> None:
    agent = api.create_agent()
    assert other_api.get("/audit", query_string={"agent_id": agent["id"]}).get_json()["items"] == []
    assert other_api.get("/audit/verify").get_json()["checked"] == 1


def _without_append_only_guard(statement: str, **params: object) -> None:
    """Tamper the way an attacker with table access would: around the append-only trigger."""
    dialect = db.engine.dialect.name
    if dialect == "postgresql":
        db.session.execute(text("ALTER TABLE audit_log DISABLE TRIGGER audit_log_no_update"))
        db.session.execute(text(statement), params)
        db.session.execute(text("ALTER TABLE audit_log ENABLE TRIGGER audit_log_no_update"))
    else:
        db.session.execute(text("DROP TRIGGER audit_log_no_update"))
        db.session.execute(text("DROP TRIGGER audit_log_no_delete"))
        db.session.execute(text(statement), params)
        db.session.execute(text("CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log "
                                "BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END"))
        db.session.execute(text("CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log "
                                "BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END"))
    db.session.commit()


def test_database_refuses_edits(app: Flask, api: ApiClient) -> None:
    api.create_agent()
    row_id = api.get("/audit").get_json()["items"][0]["id"]
    with app.app_context():
        for statement in ("UPDATE audit_log SET actor = 'x' WHERE id = :id", "DELETE FROM audit_log WHERE id = :id"):
            try:
                db.session.execute(text(statement), {"id": row_id})
                db.session.commit()
                raise AssertionError("the append-only trigger let a change through")
            except Exception as exc:  # noqa: BLE001
                db.session.rollback()
                assert "append-only" in str(exc)


def test_edited_row_is_reported(app: Flask, api: ApiClient) -> None:
    agent = api.create_agent(name="honest")
    api.patch(f"/agents/{agent['id']}", json={"name": "still honest"})
    rows = api.get("/audit").get_json()["items"]
    target = next(r for r in rows if r["action"] == "agent.created")
    with app.app_context():
        _without_append_only_guard("UPDATE audit_log SET details = :d WHERE id = :id",
                                   d='{"name": "forged"}', id=target["id"])
    assert api.get("/audit/verify").get_json() == {"ok": False, "checked": 2, "first_bad_id": target["id"]}


def test_deleted_row_is_reported(app: Flask, api: ApiClient) -> None:
    agent = api.create_agent()
    api.patch(f"/agents/{agent['id']}", json={"name": "b"})
    rows = api.get("/audit").get_json()["items"]
    created, updated = rows[1], rows[0]
    with app.app_context():
        _without_append_only_guard("DELETE FROM audit_log WHERE id = :id", id=created["id"])
    report = api.get("/audit/verify").get_json()
    assert report["ok"] is False
    assert report["first_bad_id"] == updated["id"]
