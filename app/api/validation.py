"""Request parsing: content type, JSON syntax and schema, each with its own 4xx."""

from __future__ import annotations

import json
from typing import Any, TypeVar

from flask import request
from pydantic import BaseModel, ValidationError

from app.api.errors import ApiError

ModelT = TypeVar("ModelT", bound=BaseModel)


def _reject_constant(value: str) -> Any:
    raise ValueError(f"{value} is not valid JSON")


def contains_nul(value: Any) -> bool:
    """PostgreSQL text cannot hold NUL; refusing it up front keeps both databases alike."""
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(contains_nul(k) or contains_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(contains_nul(item) for item in value)
    return False


def reject_nul_in_url() -> None:
    """Path segments and query parameters with NUL are a client error, before any lookup runs."""
    if "\x00" in request.path or any(contains_nul(k) or contains_nul(v) for k, v in request.args.items(multi=True)):
        raise ApiError(422, "validation_error", "NUL characters are not allowed in the URL")


def json_body() -> Any:
    """Parse the body strictly: application/json only, no NaN/Infinity."""
    if not request.mimetype or request.mimetype != "application/json":
        raise ApiError(415, "unsupported_media_type", "Content-Type must be application/json",
                       {"content_type": request.content_type})
    raw = request.get_data(cache=True)
    try:
        data = json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise ApiError(400, "invalid_json", "request body is not valid JSON", {"reason": str(exc)[:200]}) from exc
    if contains_nul(data):
        raise ApiError(422, "validation_error", "NUL characters are not allowed in strings")
    return data


def validation_details(exc: ValidationError) -> dict[str, Any]:
    return {
        "errors": [
            {"loc": [str(part) for part in err["loc"]], "msg": err["msg"], "type": err["type"]}
            for err in exc.errors(include_url=False, include_input=False)
        ]
    }


def parse(model: type[ModelT], data: Any) -> ModelT:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ApiError(422, "validation_error", "request body failed validation",
                       validation_details(exc)) from exc


def parse_body(model: type[ModelT]) -> ModelT:
    return parse(model, json_body())
