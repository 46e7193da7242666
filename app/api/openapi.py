"""GET /openapi.json, generated from the routes and the pydantic models their views name."""

from __future__ import annotations

import re
from typing import Any, Literal

from flask import Blueprint, Flask, current_app
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from app.api.docs import api_doc
from app.api.schemas import ErrorOut

bp = Blueprint("openapi", __name__)

JsonMode = Literal["validation", "serialization"]
REF = "#/components/schemas/{model}"
PATH_PARAM = re.compile(r"<(?:[a-z]+:)?([a-zA-Z_]+)>")
ERROR_STATUSES = {
    400: "Invalid JSON or request",
    401: "Missing or invalid API key",
    404: "Not found (or another workspace's)",
    405: "Method not allowed",
    413: "Body too large",
    415: "Body is not application/json",
    422: "Validation error",
    429: "Rate limited",
    503: "Broker, Redis or database unavailable",
}


def _models_of(app: Flask) -> list[tuple[type[BaseModel], JsonMode]]:
    """Request bodies in validation mode, responses in serialization mode."""
    models: dict[str, tuple[type[BaseModel], JsonMode]] = {ErrorOut.__name__: (ErrorOut, "serialization")}
    for view in app.view_functions.values():
        doc = getattr(view, "openapi", None)
        if not doc:
            continue
        if doc["body"] is not None:
            models[doc["body"].__name__] = (doc["body"], "validation")
        for model in doc["responses"].values():
            if isinstance(model, type) and issubclass(model, BaseModel):
                models.setdefault(model.__name__, (model, "serialization"))
    return list(models.values())


def _content(model: type[BaseModel] | str | None) -> dict[str, Any] | None:
    if model is None:
        return None
    if isinstance(model, str):
        return {model: {"schema": {"type": "string"}}}
    return {"application/json": {"schema": {"$ref": REF.format(model=model.__name__)}}}


def _operation(doc: dict[str, Any], path_params: list[str], endpoint: str) -> dict[str, Any]:
    parameters: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}} for name in path_params
    ]
    parameters += [
        {"name": name, "in": "query", "required": False, "schema": schema}
        for name, schema in doc["query"].items()
    ]
    responses: dict[str, Any] = {}
    for status, model in sorted(doc["responses"].items()):
        entry: dict[str, Any] = {"description": doc["summary"] if status < 400 else ERROR_STATUSES.get(status, "Error")}
        content = _content(model)
        if content:
            entry["content"] = content
        responses[str(status)] = entry
    for status, description in ERROR_STATUSES.items():
        if doc["public"] and status in (401, 413, 415, 422):
            continue
        responses.setdefault(str(status), {"description": description, "content": _content(ErrorOut)})
    operation: dict[str, Any] = {
        "operationId": endpoint.replace(".", "_"),
        "summary": doc["summary"],
        "tags": doc["tags"],
        "parameters": parameters,
        "responses": responses,
    }
    if doc["body"] is not None:
        operation["requestBody"] = {"required": True, "content": _content(doc["body"])}
    if doc["public"]:
        operation["security"] = []
    return operation


def build_spec(app: Flask) -> dict[str, Any]:
    """Every documented route, with its parameters, bodies, responses and the shared error shape."""
    paths: dict[str, dict[str, Any]] = {}
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: r.rule):
        view = app.view_functions.get(rule.endpoint)
        doc = getattr(view, "openapi", None)
        if not doc:
            continue
        path = PATH_PARAM.sub(r"{\1}", rule.rule)
        params = PATH_PARAM.findall(rule.rule)
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            paths.setdefault(path, {})[method.lower()] = _operation(doc, params, rule.endpoint)
    _, schemas = models_json_schema(_models_of(app), ref_template=REF)
    return {
        "openapi": "3.1.0",
        "info": {"title": "Agent runtime", "version": "1.0.0",
                 "description": "Register agents, execute them through a Celery chain, stream the results."},
        "paths": paths,
        "components": {
            "schemas": schemas.get("$defs", {}),
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearerAuth": []}],
    }


@bp.get("/openapi.json")
@api_doc(summary="This API's OpenAPI 3.1 description", responses={200: None}, public=True, tags=["operations"])
def openapi_json() -> dict[str, Any]:
    spec: dict[str, Any] = current_app.extensions.setdefault("openapi_spec", build_spec(current_app))
    return spec
