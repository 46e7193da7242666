"""A call's arguments checked against its tool's JSON Schema; a mismatch is a result the LLM can correct."""

from __future__ import annotations

import functools
import json
from typing import Any

from jsonschema import Draft202012Validator

MAX_REPORTED = 10
INVALID_ARGUMENTS = "invalid_arguments"


@functools.lru_cache(maxsize=1024)
def _validator(schema_json: str) -> Draft202012Validator:
    """Building a validator walks the schema; tools repeat, so keep one per distinct schema."""
    return Draft202012Validator(json.loads(schema_json))


def argument_error(schema: dict[str, Any], arguments: Any) -> dict[str, Any] | None:
    """None if `arguments` fit `schema`, else {code, message, details: {errors}} to hand back to the LLM."""
    if not isinstance(arguments, dict):
        shown = arguments if isinstance(arguments, str) else json.dumps(arguments)
        return {
            "code": INVALID_ARGUMENTS,
            "message": f"arguments must be a JSON object, got: {shown[:200]}",
            "details": {"errors": [{"path": "", "message": "not a JSON object"}]},
        }
    validator = _validator(json.dumps(schema, sort_keys=True))
    errors = sorted(validator.iter_errors(arguments), key=lambda error: (list(map(str, error.path)), error.message))
    if not errors:
        return None
    reported = [{"path": "/".join(str(part) for part in error.path), "message": error.message[:300]}
                for error in errors[:MAX_REPORTED]]
    first = reported[0]
    where = f" at {first['path']}" if first["path"] else ""
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return {
        "code": INVALID_ARGUMENTS,
        "message": f"arguments do not match the tool's parameters{where}: {first['message']}{more}",
        "details": {"errors": reported},
    }
