"""Operator commands: `flask --app wsgi keys create --workspace NAME`."""

from __future__ import annotations

import click
from flask import Flask

from app.services import auth


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


def register_commands(app: Flask) -> None:
    app.cli.add_command(keys_group)
