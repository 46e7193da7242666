"""Workspace scoping of event routing keys: a client's pattern never reaches another workspace's events."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.services.events import PayloadTooLarge, check_size, public_event, scoped, unscoped

WORKSPACE = "0b9c7c52-5a4e-4c55-9a43-5b2a1c7a9d10"
OTHER = "7f3e1d2c-0000-4a5b-8c9d-0e1f2a3b4c5d"
words = st.lists(st.sampled_from(["a", "b", "agent", "created"]), min_size=1, max_size=3).map(".".join)
patterns = st.lists(st.sampled_from(["a", "b", "agent", "created", "*", "#"]), min_size=1, max_size=3).map(".".join)


def topic_matches(pattern: str, key: str) -> bool:
    def match(p: list[str], k: list[str]) -> bool:
        if not p:
            return not k
        if p[0] == "#":
            return any(match(p[1:], k[i:]) for i in range(len(k) + 1))
        return bool(k) and p[0] in ("*", k[0]) and match(p[1:], k[1:])

    return match(pattern.split("."), key.split("."))


@given(pattern=patterns, event_type=words)
def test_a_scoped_pattern_never_matches_another_workspace_or_a_system_event(pattern: str, event_type: str) -> None:
    binding = scoped(WORKSPACE, pattern)
    assert not topic_matches(binding, scoped(OTHER, event_type))
    assert not topic_matches(binding, event_type)  # system events (agent.created) stay the mailbox's
    assert topic_matches(binding, scoped(WORKSPACE, event_type)) == topic_matches(pattern, event_type)


def test_public_event_shows_the_clients_own_event_type() -> None:
    event = {"event_id": "e1", "event_type": scoped(WORKSPACE, "order.created"), "data": {"n": 1},
             "published_at": "2026-01-01T00:00:00.000000Z"}
    assert public_event(WORKSPACE, event) == {**event, "event_type": "order.created"}
    assert unscoped(WORKSPACE, "agent.created") == "agent.created"


def test_size_limit_is_on_the_serialized_json() -> None:
    check_size("x" * (256 * 1024 - 2), "message")  # the two quotes make exactly 256 KiB
    with pytest.raises(PayloadTooLarge):
        check_size("x" * (256 * 1024 - 1), "message")
