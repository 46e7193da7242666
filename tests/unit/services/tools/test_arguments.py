"""Argument checks: a call that does not fit its schema becomes a readable error for the LLM."""

from __future__ import annotations

from app.services.tools.arguments import INVALID_ARGUMENTS, argument_error

SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string", "minLength": 1}, "days": {"type": "integer", "maximum": 7}},
    "required": ["city"],
    "additionalProperties": False,
}


def test_fitting_arguments_pass() -> None:
    assert argument_error(SCHEMA, {"city": "Oslo"}) is None
    assert argument_error(SCHEMA, {"city": "Oslo", "days": 3}) is None
    assert argument_error({"type": "object", "properties": {}}, {}) is None


def test_missing_required_is_named() -> None:
    error = argument_error(SCHEMA, {})
    assert error is not None
    assert error["code"] == INVALID_ARGUMENTS
    assert "'city' is a required property" in error["message"]


def test_wrong_type_names_the_path_and_counts_the_rest() -> None:
    error = argument_error(SCHEMA, {"city": "", "days": "x", "extra": 1})
    assert error is not None
    paths = [item["path"] for item in error["details"]["errors"]]
    assert sorted(paths) == paths
    assert set(paths) == {"", "city", "days"}
    assert "(and 2 more)" in error["message"]


def test_non_objects_are_refused_without_a_schema_walk() -> None:
    for value in ("{not json", [1, 2], 3, None):
        error = argument_error(SCHEMA, value)
        assert error is not None
        assert "must be a JSON object" in error["message"]


def test_long_values_are_clipped_in_messages() -> None:
    error = argument_error(SCHEMA, {"city": "x", "days": "y" * 10_000})
    assert error is not None
    assert all(len(item["message"]) <= 300 for item in error["details"]["errors"])
