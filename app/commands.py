"""Operator commands: `flask --app wsgi keys create --workspace NAME`, `flask --app wsgi mailbox run`,
`flask --app wsgi workspaces limits NAME --max-concurrency N --tokens-per-day N`."""

from __future__ import annotations

import json

import click
from flask import Flask, current_app
from flask.cli import with_appcontext

from app.extensions import db
from app.services import auth, coordination_clients
from coordination.mailbox import run_mailbox


@click.group("keys")
def keys_group() -> None:
    """Manage API keys."""


@keys_group.command("create")
@click.option("--workspace", required=True, help="Workspace name; created if it does not exist.")
def create_key(workspace: str) -> None:
    """Print a new API key for WORKSPACE as the last line (it is stored only as a hash)."""
    key, raw_key = auth.create_key(workspace.strip())
    click.echo(f"workspace {workspace} ({key.workspace_id}), key id {key.id}", err=True)
    click.echo(raw_key)


@click.group("workspaces")
def workspaces_group() -> None:
    """Workspace settings."""


@workspaces_group.command("limits")
@with_appcontext
@click.argument("name")
@click.option("--max-concurrency", type=int, default=None,
              help="Executions in flight at once (0: unlimited, -1: back to WORKSPACE_MAX_CONCURRENCY).")
@click.option("--tokens-per-day", type=int, default=None,
              help="Tokens per UTC day (0: unlimited, -1: back to WORKSPACE_TOKENS_PER_DAY).")
def workspace_limits(name: str, max_concurrency: int | None, tokens_per_day: int | None) -> None:
    """Set (or with no option, show) a workspace's limits; NULL means the configured default."""
    from app.services.admission.limits import set_workspace_limits
    from app.services.errors import NotFound

    try:
        workspace = set_workspace_limits(name.strip(), max_concurrency=max_concurrency, tokens_per_day=tokens_per_day)
    except NotFound as exc:
        raise click.ClickException(exc.message) from exc
    config = current_app.config
    shown = {
        "max_concurrency": workspace.max_concurrency,
        "tokens_per_day": workspace.tokens_per_day,
        "default_max_concurrency": int(config["WORKSPACE_MAX_CONCURRENCY"]),
        "default_tokens_per_day": int(config["WORKSPACE_TOKENS_PER_DAY"]),
    }
    click.echo(json.dumps({"workspace": workspace.name, **shown}))


@click.group("mailbox")
def mailbox_group() -> None:
    """The consumer that moves agents' queued messages into their inboxes."""


@mailbox_group.command("run")
def run_mailbox_command() -> None:
    """Store every notified agent's queued messages in its inbox until SIGTERM/SIGINT (the Procfile's mailbox)."""
    config = current_app.config
    engine = db.engine
    run_mailbox(
        config["BROKER_URL"],
        config["SQLALCHEMY_DATABASE_URI"],
        list_agent_ids=lambda: coordination_clients.live_agent_ids(engine),
        queue_type=config["QUEUE_TYPE"],
        max_attempts=int(config["MAILBOX_MAX_ATTEMPTS"]),
        poll_interval_s=float(config["MAILBOX_POLL_INTERVAL_S"]),
        sweep_interval_s=float(config["MAILBOX_SWEEP_INTERVAL_S"]),
        sweep_rate=float(config["MAILBOX_SWEEP_RATE"]),
        on_stored=coordination_clients.on_stored,
        on_dead_lettered=coordination_clients.on_dead_lettered,
        engine=engine,
    )


def register_commands(app: Flask) -> None:
    app.cli.add_command(keys_group)
    app.cli.add_command(mailbox_group)
    app.cli.add_command(workspaces_group)
