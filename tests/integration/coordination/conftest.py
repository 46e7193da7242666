"""Coordination fixtures (see helpers.py): real RabbitMQ vhost and real SQLite/PostgreSQL databases."""

from tests.integration.coordination.helpers import (  # noqa: F401 - fixtures
    agents,
    coord_broker_url,
    coord_pg_url,
    coord_sqlite_url,
    engine,
    pg_engine,
    pg_social,
    social,
    sqlite_engine,
)
