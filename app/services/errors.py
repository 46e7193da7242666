"""Domain errors the API layer turns into the one error shape."""

from __future__ import annotations

from typing import Any


class ServiceError(Exception):
    """A failure the client can act on; carries the HTTP status and error code."""

    status = 400
    code = "bad_request"

    def __init__(self, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or {}


class NotFound(ServiceError):
    status = 404
    code = "not_found"


class Conflict(ServiceError):
    status = 409
    code = "conflict"


class ValidationFailed(ServiceError):
    status = 422
    code = "validation_error"


class GovernanceDenied(ServiceError):
    status = 403
    code = "governance_denied"


class Unavailable(ServiceError):
    status = 503
    code = "unavailable"


class RateLimited(ServiceError):
    status = 429
    code = "rate_limited"
