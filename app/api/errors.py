"""The one error shape for every failure, including Flask's own 404/405/413 and unexpected 500s."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, jsonify
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy.exc import DBAPIError, OperationalError
from werkzeug.exceptions import HTTPException

from app.services.errors import ServiceError

log = logging.getLogger(__name__)

HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "rate_limited",
    503: "unavailable",
}


class ApiError(ServiceError):
    """An error raised by the HTTP layer itself (auth, content type, JSON parsing)."""

    def __init__(self, status: int, code: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message, details)
        self.status = status
        self.code = code


def error_response(status: int, code: str, message: str, details: dict[str, Any] | None = None) -> Response:
    response = jsonify({"error": {"code": code, "message": message, "details": details or {}}})
    response.status_code = status
    return response


def _service_error(exc: ServiceError) -> Response:
    response = error_response(exc.status, exc.code, exc.message, exc.details)
    if "retry_after_s" in exc.details:
        response.headers["Retry-After"] = str(exc.details["retry_after_s"])
    return response


def _http_error(exc: HTTPException) -> Response:
    status = exc.code or 500
    code = HTTP_CODES.get(status, "internal_error" if status >= 500 else "bad_request")
    response = error_response(status, code, exc.description or code)
    if status == 405 and exc.valid_methods:  # type: ignore[attr-defined]
        response.headers["Allow"] = ", ".join(exc.valid_methods)  # type: ignore[attr-defined]
    return response


def _dependency_down(exc: Exception) -> Response:
    """A database or Redis that cannot be reached is the service being unavailable, not a bug."""
    log.warning("dependency unavailable: %s", type(exc).__name__)
    return error_response(503, "unavailable", "a backing service is unavailable, retry later",
                          {"dependency": _dependency_name(exc)})


def _dependency_name(exc: Exception) -> str:
    if isinstance(exc, (RedisConnectionError, RedisTimeoutError)):
        return "redis"
    return "database"


def _unexpected(exc: Exception) -> Response:
    log.exception("unhandled error")
    return error_response(500, "internal_error", "internal server error")


def register_error_handlers(app: Flask) -> None:
    """Route every exception through the one error shape; no HTML, no traceback."""
    app.register_error_handler(ServiceError, _service_error)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(OperationalError, _dependency_down)
    app.register_error_handler(RedisConnectionError, _dependency_down)
    app.register_error_handler(RedisTimeoutError, _dependency_down)
    app.register_error_handler(DBAPIError, _db_error)
    app.register_error_handler(Exception, _unexpected)


def _db_error(exc: DBAPIError) -> Response:
    if exc.connection_invalidated or isinstance(exc, OperationalError):
        return _dependency_down(exc)
    return _unexpected(exc)
