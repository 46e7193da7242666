"""Property: argument_error agrees with jsonschema itself, never raises, and reports bounded errors."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from app.services.tools.arguments import MAX_REPORTED, argument_error

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)
LEAF_SCHEMAS = st.sampled_from([
    {"type": "string"}, {"type": "integer"}, {"type": "number", "minimum": 0}, {"type": "boolean"},
    {"type": "array", "items": {"type": "integer"}, "maxItems": 3}, {"enum": ["a", "b", 1]},
    {"type": "string", "maxLength": 3}, {},
])


@st.composite
def object_schemas(draw: st.DrawFn) -> dict[str, Any]:
    """Object schemas with a few typed properties, some required, maybe closed."""
    names = draw(st.lists(st.text("abcxyz", min_size=1, max_size=3), unique=True, max_size=4))
    properties = {name: draw(LEAF_SCHEMAS) for name in names}
    required = [name for name in names if draw(st.booleans())]
    schema: dict[str, Any] = {"type": "object", "properties": properties, "required": required}
    if draw(st.booleans()):
        schema["additionalProperties"] = False
    return schema


@settings(max_examples=300, deadline=None)
@given(schema=object_schemas(), arguments=JSON)
def test_agrees_with_jsonschema(schema: dict[str, Any], arguments: Any) -> None:
    error = argument_error(schema, arguments)
    valid = isinstance(arguments, dict) and Draft202012Validator(schema).is_valid(arguments)
    assert (error is None) == valid
    if error is not None:
        assert error["code"] == "invalid_arguments"
        assert 1 <= len(error["details"]["errors"]) <= MAX_REPORTED
        assert error["message"]


@settings(max_examples=200, deadline=None)
@given(schema=object_schemas(), data=st.data())
def test_arguments_built_to_fit_pass(schema: dict[str, Any], data: st.DataObject) -> None:
    samples = {"string": st.text(max_size=3), "integer": st.integers(0, 5), "number": st.integers(0, 5),
               "boolean": st.booleans(), "array": st.lists(st.integers(), max_size=3)}
    arguments: dict[str, Any] = {}
    for name, sub in schema["properties"].items():
        if "enum" in sub:
            arguments[name] = data.draw(st.sampled_from(sub["enum"]))
        elif "type" in sub:
            arguments[name] = data.draw(samples[sub["type"]])
        else:
            arguments[name] = data.draw(JSON)
    assert argument_error(schema, arguments) is None
