"""Idempotency fingerprints: equal for the same request however it was written, different otherwise."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from app.services.idempotency import request_hash

BODY = {"message": "hi", "stream": False, "action": "chat", "timeout_s": 120, "metadata": {"a": 1, "b": [1, 2]}}


def test_key_order_does_not_matter() -> None:
    reordered = {"metadata": {"b": [1, 2], "a": 1}, "timeout_s": 120, "action": "chat", "stream": False,
                 "message": "hi"}
    assert request_hash(agent_id="a1", body=BODY) == request_hash(agent_id="a1", body=reordered)


def test_any_difference_changes_it() -> None:
    base = request_hash(agent_id="a1", body=BODY)
    assert request_hash(agent_id="a2", body=BODY) != base
    assert request_hash(agent_id="a1", body={**BODY, "message": "hi "}) != base
    assert request_hash(agent_id="a1", body={**BODY, "stream": True}) != base
    assert request_hash(agent_id="a1", body={**BODY, "metadata": None}) != base


@given(st.text(min_size=1, max_size=50), st.text(min_size=1, max_size=50))
def test_messages_collide_only_when_equal(first: str, second: str) -> None:
    same = request_hash(agent_id="a", body={**BODY, "message": first}) == request_hash(
        agent_id="a", body={**BODY, "message": second}
    )
    assert same == (first == second)
