"""Operator commands: `flask --app wsgi keys create --workspace NAME`, `flask --app wsgi mailbox run`,
`flask --app wsgi workspaces limits NAME --max-concurrency N --tokens-per-day N`,
`flask --app wsgi agents import FILE.jsonl --workspace NAME`."""

from __future__ import annotations

import json
from typing import IO, Any

import click
from flask import Flask, current_app
from flask.cli import with_appcontext
from pydantic import ValidationError

from app.api.agents import create_fields
from app.api.schemas import AgentCreate
from app.api.validation import contains_nul, validation_details
from app.extensions import db
from app.services import agents, auth, coordination_clients, inboxes
from app.services.auth import Principal
from app.services.errors import ServiceError
from coordination.mailbox_process import run_mailbox

IMPORT_ACTOR = "cli"


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


@click.group("agents")
def agents_group() -> None:
    """Register agents in bulk."""


def _reject_constant(value: str) -> Any:
    raise ValueError(f"{value} is not valid JSON")


def parse_agent_lines(stream: IO[str]) -> tuple[list[dict[str, Any]], list[str]]:
    """Each non-blank line validated like a POST /agents body: the model fields, and one error per bad line."""
    rows: list[dict[str, Any]] = []
    errors: list[str] = []
    for number, line in enumerate(stream, start=1):
        if not line.strip():
            continue
        try:
            data = json.loads(line, parse_constant=_reject_constant)
        except (ValueError, RecursionError) as exc:
            errors.append(f"line {number}: invalid JSON ({str(exc)[:200]})")
            continue
        if contains_nul(data):
            errors.append(f"line {number}: NUL characters are not allowed in strings")
            continue
        try:
            rows.append(create_fields(AgentCreate.model_validate(data)))
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(e['loc']) or '(body)'}: {e['msg']}"
                                 for e in validation_details(exc)["errors"])
            errors.append(f"line {number}: {problems}")
    return rows, errors


@agents_group.command("import")
@with_appcontext
@click.argument("file", type=click.File("r", encoding="utf-8"))
@click.option("--workspace", required=True, help="Workspace name; created if it does not exist.")
@click.option("--batch-size", default=1000, show_default=True, type=click.IntRange(1, 10_000),
              help="Agents per transaction.")
def import_agents(file: IO[str], workspace: str, batch_size: int) -> None:
    """Register one agent per JSON line of FILE (a POST /agents body each), audited `agent.created`.

    Every line is validated first; if any is bad, each bad line is reported and nothing is imported (exit 1).
    Prints the new agent ids in input order, one per line.
    """
    rows, errors = parse_agent_lines(file)
    if errors:
        for error in errors[:100]:
            click.echo(error, err=True)
        if len(errors) > 100:
            click.echo(f"... and {len(errors) - 100} more bad lines", err=True)
        raise click.ClickException(f"{len(errors)} bad line(s); nothing imported")
    workspace_row = auth.get_or_create_workspace(workspace.strip())
    db.session.commit()
    principal = Principal(workspace_id=workspace_row.id, key_id="", actor=IMPORT_ACTOR)
    done = 0
    for start in range(0, len(rows), batch_size):
        try:
            ids = agents.create_many(principal, rows[start:start + batch_size])
        except ServiceError as exc:
            raise click.ClickException(f"{exc}; the first {done} agents were imported, the rest not") from exc
        done += len(ids)
        click.echo("\n".join(ids))
    click.echo(f"imported {len(rows)} agents into workspace {workspace} ({workspace_row.id})", err=True)


@agents_group.command("declare-inboxes")
@with_appcontext
def declare_inboxes_command() -> None:
    """Declare now the inbox queue of every agent that has none yet (a first send declares it otherwise)."""
    try:
        declared = inboxes.declare_undeclared()
    except ServiceError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"declared {declared} inboxes")


def register_commands(app: Flask) -> None:
    app.cli.add_command(keys_group)
    app.cli.add_command(mailbox_group)
    app.cli.add_command(workspaces_group)
    app.cli.add_command(agents_group)
