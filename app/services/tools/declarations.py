"""Checks on an agent's tool declarations at registration, so a bad tool is a 422 and never a failed call."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from app.services.errors import ValidationFailed
from app.services.tools.addresses import AddressRefused, parse_allowed_hosts, parse_url

DEFAULT_TIMEOUT_S = 30
DEFAULT_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}}
FIELDS = ("name", "description", "parameters", "action", "kind", "url", "agent_id", "timeout_s")
AgentExists = Callable[[str], bool]
"""agent_id -> whether that agent exists, is not deleted, and is in the declaring agent's workspace."""


def _error(index: int, field: str | None, message: str, kind: str) -> dict[str, Any]:
    """One entry of error.details.errors, in the shape pydantic's errors use."""
    loc: list[str] = ["tools", str(index)] + ([field] if field else [])
    return {"loc": loc, "msg": message, "type": kind}


def _schema_problem(parameters: Any) -> str | None:
    """Why `parameters` is not an object JSON Schema (Draft 2020-12), else None."""
    if not isinstance(parameters, dict):
        return "parameters must be a JSON Schema object"
    try:
        Draft202012Validator.check_schema(parameters)
    except SchemaError as exc:
        where = "/".join(str(part) for part in exc.absolute_path)
        return f"parameters is not a valid JSON Schema{f' at {where}' if where else ''}: {exc.message}"
    kind = parameters.get("type", "object")
    if kind != "object":
        return f"parameters must describe an object (type \"object\"), not {kind!r}"
    return None


def _kind_problems(index: int, tool: dict[str, Any], allowed_hosts: frozenset[str],
                   agent_exists: AgentExists) -> list[dict[str, Any]]:
    """url only and always for webhooks, agent_id only and always for agent tools."""
    kind = tool["kind"]
    problems: list[dict[str, Any]] = []
    for field, owner in (("url", "webhook"), ("agent_id", "agent"), ("timeout_s", "webhook")):
        if tool.get(field) is not None and kind != owner:
            problems.append(_error(index, field, f"{field} is only for kind {owner!r}", "extra_field"))
    if kind == "webhook":
        if tool.get("url") is None:
            problems.append(_error(index, "url", "a webhook tool needs url", "missing"))
        else:
            try:
                parse_url(tool["url"], allowed_hosts)
            except AddressRefused as exc:
                problems.append(_error(index, "url", str(exc), "url_refused"))
    if kind == "agent":
        if tool.get("agent_id") is None:
            problems.append(_error(index, "agent_id", "an agent tool needs agent_id", "missing"))
        elif not agent_exists(tool["agent_id"]):
            problems.append(_error(index, "agent_id", f"agent {tool['agent_id']} not found in this workspace",
                                   "not_found"))
    return problems


def normalize(tool: dict[str, Any]) -> dict[str, Any]:
    """The stored form: declared fields only, None left out, webhook timeout_s filled in."""
    out = {field: tool[field] for field in FIELDS if tool.get(field) is not None}
    out.setdefault("description", "")
    if out["kind"] == "webhook":
        out.setdefault("timeout_s", DEFAULT_TIMEOUT_S)
    return out


def check_tools(tools: list[dict[str, Any]], *, allowed_hosts: str | frozenset[str] | None,
                agent_exists: AgentExists) -> list[dict[str, Any]]:
    """Validate field-typed declarations (pydantic did the types); raise ValidationFailed listing every problem."""
    hosts = allowed_hosts if isinstance(allowed_hosts, frozenset) else parse_allowed_hosts(allowed_hosts)
    problems: list[dict[str, Any]] = []
    seen: set[str] = set()
    tools = [{"parameters": dict(DEFAULT_PARAMETERS), **tool} for tool in tools]
    for index, tool in enumerate(tools):
        if tool["name"] in seen:
            problems.append(_error(index, "name", f"tool name {tool['name']!r} is declared twice", "duplicate"))
        seen.add(tool["name"])
        if (problem := _schema_problem(tool.get("parameters"))) is not None:
            problems.append(_error(index, "parameters", problem, "json_schema"))
        problems.extend(_kind_problems(index, tool, hosts, agent_exists))
    if problems:
        raise ValidationFailed("tools failed validation", {"errors": problems})
    return [normalize(tool) for tool in tools]
