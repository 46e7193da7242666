"""Inbox notices: the body is the receiver's id; a follower's flag survives a notice that lands mid-read."""

from __future__ import annotations

from types import SimpleNamespace

from coordination.notify import Watch, decode_notice


def test_a_notice_body_is_an_agent_id() -> None:
    assert decode_notice(SimpleNamespace(body=b"agent-1")) == "agent-1"
    assert decode_notice(SimpleNamespace(body="agent-2")) == "agent-2"
    for bad in (b"", b"has space", b"\xff\xfe", b"x" * 65):
        assert decode_notice(SimpleNamespace(body=bad)) is None


def test_a_wake_during_the_read_is_not_lost() -> None:
    watch = Watch("a")
    watch.clear()  # before the read
    watch.event.set()  # the watcher thread: a notice arrived while the follower was reading
    assert watch.wait(0) is True  # so the follower reads again at once
    watch.clear()
    assert watch.wait(0) is False
