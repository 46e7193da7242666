"""HTTP layer: blueprints, auth, validation and the one error shape."""

from __future__ import annotations

from flask import Flask


def register_blueprints(app: Flask) -> None:
    """Imported here, inside the factory, so no module imports the app at import time."""
    from app.api import agents, audit, credentials, executions, health, metrics, openapi

    for module in (health, openapi, metrics, agents, audit, executions, credentials):
        app.register_blueprint(module.bp)
