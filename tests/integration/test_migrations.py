"""`flask db upgrade` builds the schema the models describe, on SQLite and PostgreSQL, and downgrades cleanly."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from flask_migrate import downgrade, upgrade
from sqlalchemy import inspect, text

from app import create_app
from app.extensions import db
from coordination.schema import metadata as coordination_metadata
from tests.support import services

MIGRATIONS = str(Path(__file__).resolve().parent.parent.parent / "migrations")
TABLES = {"workspaces", "api_keys", "agents", "executions", "audit_log", "credentials", "inbox_messages", "tool_calls",
          "dead_letters"}


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_database(request: pytest.FixtureRequest, tmp_path: Path):  # type: ignore[no-untyped-def]
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'migrate.db'}"
    else:
        with services.postgres_database(services.run_token()) as url:
            yield url


def test_upgrade_matches_models_and_downgrades(empty_database: str) -> None:
    app = create_app({"TESTING": True, "SQLALCHEMY_DATABASE_URI": empty_database})
    with app.app_context():
        upgrade(directory=MIGRATIONS)
        assert TABLES <= set(inspect(db.engine).get_table_names())
        with db.engine.connect() as connection:
            context = MigrationContext.configure(connection)
            diff = compare_metadata(context, [db.metadata, coordination_metadata])
        assert diff == []
        downgrade(directory=MIGRATIONS, revision="base")
        assert not TABLES & set(inspect(db.engine).get_table_names())
        db.engine.dispose()


def test_chain_head_is_backfilled_from_existing_audit_rows(empty_database: str) -> None:
    """0002 moves the chain head onto the workspace row: a database with audit rows keeps appending to its chain."""
    app = create_app({"TESTING": True, "SQLALCHEMY_DATABASE_URI": empty_database})
    with app.app_context():
        upgrade(directory=MIGRATIONS, revision="0001")
        with db.engine.begin() as connection:
            connection.execute(text("INSERT INTO workspaces (id, name, created_at) VALUES "
                                    "('w1', 'one', CURRENT_TIMESTAMP), ('w2', 'two', CURRENT_TIMESTAMP)"))
            for index, digest in enumerate(["a" * 64, "b" * 64]):
                connection.execute(
                    text("INSERT INTO audit_log (at, workspace_id, actor, action, result, details, prev_hash, hash) "
                         "VALUES (CURRENT_TIMESTAMP, 'w1', 'cli', 'key.created', 'ok', '{}', :prev, :hash)"),
                    {"prev": "0" * 64 if index == 0 else "a" * 64, "hash": digest},
                )
        upgrade(directory=MIGRATIONS)
        with db.engine.connect() as connection:
            heads = dict(connection.execute(text("SELECT id, audit_head FROM workspaces")).all())
        assert heads == {"w1": "b" * 64, "w2": None}
        downgrade(directory=MIGRATIONS, revision="base")
        db.engine.dispose()
