"""tool_outputs must answer every waiting call exactly once; anything else is a 409 that names the ids."""

from __future__ import annotations

import pytest

from app.services.errors import Conflict
from app.services.tools.outputs import check_outputs

KNOWN = ["a", "b", "c"]


def test_every_waiting_call_answered_once() -> None:
    outputs = [{"tool_call_id": "b", "output": {"x": 1}}, {"tool_call_id": "a", "output": "fine"}]
    assert check_outputs(outputs, waiting_ids=["a", "b"], known_ids=KNOWN) == {"b": {"x": 1}, "a": "fine"}


@pytest.mark.parametrize(
    ("ids", "field"),
    [(["a", "b", "zz"], "unknown"), (["a", "b", "c"], "not_waiting"), (["a"], "missing"),
     (["a", "b", "a"], "repeated")],
)
def test_conflicts_name_the_ids(ids: list[str], field: str) -> None:
    with pytest.raises(Conflict) as caught:
        check_outputs([{"tool_call_id": call_id, "output": 1} for call_id in ids], waiting_ids=["a", "b"],
                      known_ids=KNOWN)
    assert caught.value.details[field]
    assert caught.value.details["waiting"] == ["a", "b"]
