"""Operator commands: `flask --app wsgi keys create --workspace NAME`, `flask --app wsgi mailbox run`."""

from __future__ import annotations

import click
from flask import Flask, current_app

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


@click.group("mailbox")
def mailbox_group() -> None:
    """The consumer that moves agents' queued messages into their inboxes."""


@mailbox_group.command("run")
def run_mailbox_command() -> None:
    """Drain every live agent's inbox queue into the database until SIGTERM/SIGINT (the Procfile's mailbox)."""
    config = current_app.config
    engine = db.engine
    run_mailbox(
        config["BROKER_URL"],
        config["SQLALCHEMY_DATABASE_URI"],
        list_agent_ids=lambda: coordination_clients.live_agent_ids(engine),
        queue_type=config["QUEUE_TYPE"],
        max_attempts=int(config["MAILBOX_MAX_ATTEMPTS"]),
        poll_interval_s=float(config["MAILBOX_POLL_INTERVAL_S"]),
        refresh_interval_s=float(config["MAILBOX_REFRESH_INTERVAL_S"]),
        on_stored=coordination_clients.on_stored,
        on_dead_lettered=coordination_clients.on_dead_lettered,
        engine=engine,
    )


def register_commands(app: Flask) -> None:
    app.cli.add_command(keys_group)
    app.cli.add_command(mailbox_group)
