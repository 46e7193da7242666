"""HTTP layer: blueprints, auth, validation and the one error shape."""

from __future__ import annotations

from flask import Flask


def register_blueprints(app: Flask) -> None:
    """Imported here, inside the factory, so no module imports the app at import time."""
    from app.api import (
        agents,
        audit,
        credentials,
        events,
        executions,
        health,
        messages,
        metrics,
        openapi,
        tool_outputs,
        ui,
        usage,
    )

    for module in (ui, health, openapi, metrics, agents, audit, executions, tool_outputs, credentials, messages,
                   events, usage):
        app.register_blueprint(module.bp)
