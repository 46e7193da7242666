"""Application factory: a list of named register steps."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask import Flask

from app.config import INSTANCE_DIR, from_environment


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    app = Flask(__name__, instance_path=str(INSTANCE_DIR))
    register_config(app, config)
    register_logging(app)
    register_tracing(app)
    register_metrics(app)
    register_extensions(app)
    register_celery(app)
    register_auth(app)
    register_blueprints(app)
    register_error_handlers(app)
    register_commands(app)
    return app


def register_config(app: Flask, config: Mapping[str, Any] | None) -> None:
    """Environment first, then the caller's overrides (tests)."""
    app.config.from_mapping(from_environment())
    if config:
        app.config.from_mapping(config)
    INSTANCE_DIR.mkdir(parents=True, exist_ok=True)


def register_logging(app: Flask) -> None:
    from app.logs import register_logging as register

    register(app)


def register_tracing(app: Flask) -> None:
    """OpenTelemetry, only when an OTLP endpoint (or a test's span processor) is configured."""
    from app.tracing import register_tracing as register

    register(app)


def register_metrics(app: Flask) -> None:
    from app.metrics import register_metrics as register

    register(app)


def register_extensions(app: Flask) -> None:
    """Bind the database and migrations, and tune the engine for its dialect."""
    from app import models  # noqa: F401 - registers the tables before Alembic looks at them
    from app.database import pool_options, tune_engine
    from app.extensions import db, migrate

    app.config["SQLALCHEMY_ENGINE_OPTIONS"] = {
        **pool_options(app.config["SQLALCHEMY_DATABASE_URI"], size=int(app.config["DATABASE_POOL_SIZE"]),
                       max_overflow=int(app.config["DATABASE_MAX_OVERFLOW"]),
                       timeout_s=float(app.config["DATABASE_POOL_TIMEOUT_S"])),
        **app.config["SQLALCHEMY_ENGINE_OPTIONS"],  # what a caller set explicitly wins
    }
    db.init_app(app)
    migrate.init_app(app, db, directory=str(INSTANCE_DIR.parent / "migrations"))
    with app.app_context():
        tune_engine(db.engine,
                    idle_in_transaction_timeout_s=float(app.config["DATABASE_IDLE_IN_TRANSACTION_TIMEOUT_S"]))


def register_celery(app: Flask) -> None:
    from app.celery_app import celery_init_app

    celery_init_app(app)


def register_auth(app: Flask) -> None:
    from app.api.auth import register_auth as register

    register(app)


def register_blueprints(app: Flask) -> None:
    from app.api import register_blueprints as register

    register(app)


def register_error_handlers(app: Flask) -> None:
    from app.api.errors import register_error_handlers as register

    register(app)


def register_commands(app: Flask) -> None:
    from app.commands import register_commands as register

    register(app)
