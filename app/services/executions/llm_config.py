"""The agent's LLM configuration: refused at request time if it cannot work, resolved to a provider at run time."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flask import current_app

from app.llm import DEFAULT_PROVIDER, InvalidOptions, Provider, Timeouts, get_provider, validate_options
from app.models import Agent
from app.services import credentials
from app.services.agents import RunSettings
from app.services.errors import NotFound, ValidationFailed


def provider_name(llm: dict[str, Any] | None) -> str:
    return str((llm or {}).get("provider") or DEFAULT_PROVIDER)


def check(workspace_id: str, agent: Agent | RunSettings) -> None:
    """Refuse (422) an agent whose provider, options or credential cannot work, before anything is recorded."""
    llm = agent.llm or {}
    provider = provider_name(llm)
    try:
        validate_options(provider, llm.get("options") or {})
    except InvalidOptions as exc:
        raise ValidationFailed(f"agent llm options are invalid: {exc.message}",
                               {"field": exc.field, "agent_id": agent.id}) from exc
    credential_id = llm.get("credential_id")
    if credential_id:
        try:
            credential_provider = credentials.provider_of(workspace_id, str(credential_id))
        except NotFound as exc:
            raise ValidationFailed("agent llm.credential_id names no credential of this workspace",
                                   {"credential_id": credential_id, "agent_id": agent.id}) from exc
        if credential_provider != provider:
            raise ValidationFailed(
                f"credential is for provider {credential_provider!r}, agent uses {provider!r}",
                {"credential_id": credential_id, "agent_id": agent.id},
            )
    elif provider != DEFAULT_PROVIDER:
        raise ValidationFailed(f"provider {provider!r} needs llm.credential_id (POST /credentials)",
                               {"agent_id": agent.id})


@dataclass(frozen=True)
class Resolved:
    """What one LLM call needs: the provider (with its decrypted credential), options, model, system prompt."""

    provider: Provider
    options: dict[str, Any]
    model: str | None
    system_prompt: str | None


def resolve(workspace_id: str, agent: dict[str, Any], timeouts: Timeouts) -> Resolved:
    """The agent's provider as the LLM step runs it (agent: {llm, system_prompt} as the governance step read it)."""
    llm = agent.get("llm") or {}
    api_key = base_url = None
    if llm.get("credential_id"):
        config = current_app.config
        vault = credentials.Vault(credentials_key=config["CREDENTIALS_KEY"], secret_key=config["SECRET_KEY"])
        secret = credentials.reveal(vault, workspace_id, str(llm["credential_id"]))
        api_key, base_url = secret.api_key, secret.base_url
    provider = get_provider(provider_name(llm), api_key=api_key, base_url=base_url, timeouts=timeouts)
    return Resolved(provider, dict(llm.get("options") or {}), llm.get("model"), agent.get("system_prompt"))
