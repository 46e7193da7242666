"""Bearer-key authentication for every route that is not marked public."""

from __future__ import annotations

from flask import Flask, current_app, g, request

from app import logs
from app.api.errors import ApiError
from app.api.validation import reject_nul_in_url
from app.services import auth, rate_limit, streams
from app.services.auth import Principal


def _is_public() -> bool:
    if request.endpoint is None:
        return True  # unknown URL: let the 404/405 handler answer
    view = current_app.view_functions.get(request.endpoint)
    return bool(getattr(view, "openapi", {}).get("public", False)) or request.endpoint == "static"


def _authenticate() -> None:
    reject_nul_in_url()
    if request.method == "OPTIONS" or _is_public():
        return
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "unauthorized", "missing bearer API key",
                       {"hint": "send Authorization: Bearer <api key>"})
    principal = auth.authenticate(token.strip())
    if principal is None:
        raise ApiError(401, "unauthorized", "invalid API key")
    g.principal = principal
    logs.bind(workspace_id=principal.workspace_id)
    limit = current_app.config["RATE_LIMIT_PER_MINUTE"]
    if limit > 0:
        rate_limit.check(streams.client(current_app.config["REDIS_URL"]), principal.key_id, limit)


def current_principal() -> Principal:
    principal: Principal = g.principal
    return principal


def register_auth(app: Flask) -> None:
    app.before_request(_authenticate)
