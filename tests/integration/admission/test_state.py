"""The admission scripts on a real Redis: slots, windows, 429 pauses, fair order, wait deadlines."""

from __future__ import annotations

from app.services.admission.state import AdmissionState
from tests.integration.admission.conftest import item

T0 = 1_800_000_000_000  # ms; every call passes its own clock, so windows and leases are exact


def test_workspace_slots_queue_the_excess_and_the_freed_slot_dispatches_it(state: AdmissionState) -> None:
    assert state.admit(item("a1", wscap=2), now_ms=T0, capacity=100) is None
    assert state.admit(item("a2", wscap=2), now_ms=T0, capacity=100) is None
    assert state.admit(item("a3", wscap=2), now_ms=T0, capacity=100) == "workspace_concurrency"
    assert state.queued_reason("a3") == "workspace_concurrency"
    assert state.dispatch(now_ms=T0 + 1, capacity=100) == []
    state.finish("a1", only_if_ended=False)
    assert state.dispatch(now_ms=T0 + 2, capacity=100) == [("a3", ["a3-t0", "a3-t1", "a3-t2"])]
    assert state.queued_reason("a3") is None
    assert sorted(state.held_ids()) == ["a2", "a3"]


def test_a_new_execution_joins_its_workspace_queue_instead_of_overtaking_it(state: AdmissionState) -> None:
    assert state.admit(item("a1", wscap=1), now_ms=T0, capacity=100) is None
    assert state.admit(item("a2", wscap=1), now_ms=T0, capacity=100) == "workspace_concurrency"
    state.finish("a1", only_if_ended=False)
    # a slot is free, but a2 was first: a3 waits behind it
    assert state.admit(item("a3", wscap=1), now_ms=T0, capacity=100) == "workspace_concurrency"
    assert [i for i, _ in state.dispatch(now_ms=T0, capacity=100)] == ["a2"]


def test_capacity_is_shared_round_robin_between_workspaces(state: AdmissionState) -> None:
    for n in range(2):
        assert state.admit(item(f"run{n}", "A"), now_ms=T0, capacity=2) is None
    for n in range(50):
        assert state.admit(item(f"a{n}", "A"), now_ms=T0, capacity=2) == "capacity"
    for n in range(3):
        assert state.admit(item(f"b{n}", "B"), now_ms=T0 + 1, capacity=2) == "capacity"
    order: list[str] = []
    running = ["run0", "run1"]
    for step in range(8):
        state.finish(running.pop(0), only_if_ended=False)
        started = [i for i, _ in state.dispatch(now_ms=T0 + 10 + step, capacity=2)]
        assert len(started) == 1
        order += started
        running += started
    assert order == ["a0", "b0", "a1", "b1", "a2", "b2", "a3", "a4"]


def test_a_workspace_at_its_own_limit_does_not_block_the_others(state: AdmissionState) -> None:
    assert state.admit(item("a0", "A", wscap=1), now_ms=T0, capacity=3) is None
    assert state.admit(item("a1", "A", wscap=1), now_ms=T0, capacity=3) == "workspace_concurrency"
    assert state.admit(item("b0", "B"), now_ms=T0, capacity=3) is None
    assert state.admit(item("c0", "C"), now_ms=T0, capacity=3) is None
    assert state.admit(item("c1", "C"), now_ms=T0, capacity=3) == "capacity"
    state.finish("b0", only_if_ended=False)
    assert [i for i, _ in state.dispatch(now_ms=T0 + 1, capacity=3)] == ["c1"]  # A's head skipped, C served


def test_credential_concurrency(state: AdmissionState) -> None:
    assert state.admit(item("x1", "A", cred="k", credcap=1), now_ms=T0, capacity=10) is None
    assert state.admit(item("x2", "B", cred="k", credcap=1), now_ms=T0, capacity=10) == "credential_concurrency"
    assert state.admit(item("x3", "B", cred="other", credcap=1), now_ms=T0, capacity=10) == "credential_concurrency"
    state.finish("x1", only_if_ended=False)
    # x3 waited behind x2 (FIFO per workspace, whatever its credential); both fit now
    assert [i for i, _ in state.dispatch(now_ms=T0 + 1, capacity=10)] == ["x2", "x3"]


def test_tokens_per_minute_is_a_sliding_window_with_one_oversized_request_allowed(state: AdmissionState) -> None:
    assert state.admit(item("t1", cred="k", tpm=100, est=40), now_ms=T0, capacity=10) is None
    assert state.admit(item("t2", "B", cred="k", tpm=100, est=40), now_ms=T0 + 10_000, capacity=10) is None
    assert state.admit(item("t3", "C", cred="k", tpm=100, est=40), now_ms=T0 + 20_000, capacity=10) == \
        "tokens_per_minute"
    assert state.dispatch(now_ms=T0 + 59_999, capacity=10) == []
    assert [i for i, _ in state.dispatch(now_ms=T0 + 60_001, capacity=10)] == ["t3"]  # t1 left the window
    state.redis.flushdb()
    assert state.admit(item("big", cred="k", tpm=100, est=150), now_ms=T0, capacity=10) is None
    assert state.admit(item("next", "B", cred="k", tpm=100, est=1), now_ms=T0 + 1, capacity=10) == \
        "tokens_per_minute"


def test_a_reservation_is_corrected_to_the_tokens_really_used(state: AdmissionState) -> None:
    assert state.admit(item("c1", cred="k", tpm=100, est=40), now_ms=T0, capacity=10) is None
    first = state.reserve_call("c1", est=40, now_ms=T0 + 1, expiry_ms=T0 + 60_000)
    assert (first.member, first.reason, first.credential_id, first.workspace_id) == ("c1", None, "k", "A")
    state.correct("k", first.member, 95)
    assert state.window_sum("tpm", "k") == 95
    second = state.reserve_call("c1", est=10, now_ms=T0 + 2, expiry_ms=T0 + 60_000)
    assert second.reason == "tokens_per_minute" and 0 < second.wait_ms <= 60_000
    later = state.reserve_call("c1", est=10, now_ms=T0 + 1 + 60_000, expiry_ms=T0 + 120_000)
    assert later.reason is None and later.member.startswith("c1:")


def test_requests_per_minute(state: AdmissionState) -> None:
    for n in range(3):
        assert state.admit(item(f"r{n}", f"W{n}", cred="k", rpm=3), now_ms=T0 + n, capacity=10) is None
    assert state.admit(item("r3", "W3", cred="k", rpm=3), now_ms=T0 + 5, capacity=10) == "requests_per_minute"
    assert [i for i, _ in state.dispatch(now_ms=T0 + 60_001, capacity=10)] == ["r3"]


def test_a_429_pauses_every_execution_on_the_credential(state: AdmissionState) -> None:
    assert state.pause("k", until_ms=T0 + 2_000, now_ms=T0) == T0 + 2_000
    assert state.pause("k", until_ms=T0 + 1_000, now_ms=T0) == T0 + 2_000  # the later pause wins
    assert state.admit(item("p1", cred="k"), now_ms=T0 + 1, capacity=10) == "requests_per_minute"
    assert state.admit(item("q1", "B", cred="other"), now_ms=T0 + 1, capacity=10) is None
    assert state.dispatch(now_ms=T0 + 1_999, capacity=10) == []
    assert [i for i, _ in state.dispatch(now_ms=T0 + 2_001, capacity=10)] == ["p1"]
    state.pause("other", until_ms=T0 + 5_000, now_ms=T0 + 2_001)
    waiting = state.reserve_call("q1", est=1, now_ms=T0 + 2_002, expiry_ms=T0 + 60_000)
    assert waiting.member == "q1"  # its admission reservation was taken before the pause
    again = state.reserve_call("q1", est=1, now_ms=T0 + 2_003, expiry_ms=T0 + 60_000)
    assert again.reason == "requests_per_minute" and again.wait_ms == 2_997


def test_an_expired_lease_frees_its_slot(state: AdmissionState) -> None:
    assert state.admit(item("dead", wscap=1, lease=1_000), now_ms=T0, capacity=10) is None
    assert state.admit(item("next", wscap=1), now_ms=T0 + 999, capacity=10) == "workspace_concurrency"
    assert [i for i, _ in state.dispatch(now_ms=T0 + 1_001, capacity=10)] == ["next"]
    assert state.live_count("adm:slots:ws:A", now_ms=T0 + 1_001) == 1


def test_waits_past_their_deadline_leave_the_queue(state: AdmissionState) -> None:
    assert state.admit(item("run", wscap=1), now_ms=T0, capacity=10) is None
    assert state.admit(item("w1", wscap=1, deadline=T0 + 500), now_ms=T0, capacity=10) == "workspace_concurrency"
    assert state.admit(item("w2", wscap=1, deadline=T0 + 5_000), now_ms=T0, capacity=10) == "workspace_concurrency"
    assert state.expire_waits(now_ms=T0 + 501) == ["w1"]
    assert state.queued_by_reason() == {"workspace_concurrency": 1}
    state.finish("run", only_if_ended=False)
    assert [i for i, _ in state.dispatch(now_ms=T0 + 502, capacity=10)] == ["w2"]


def test_ended_executions_are_dropped_from_the_queue_and_only_ended_ones_freed(state: AdmissionState) -> None:
    assert state.admit(item("run", wscap=1), now_ms=T0, capacity=10) is None
    assert state.admit(item("gone", wscap=1), now_ms=T0, capacity=10) == "workspace_concurrency"
    assert state.admit(item("live", wscap=1), now_ms=T0, capacity=10) == "workspace_concurrency"
    assert not state.finish("run", only_if_ended=True)  # still running
    state.redis.set("exec:run:terminal", 5)
    state.redis.set("exec:gone:terminal", 3)  # cancelled while it waited
    assert state.finish("run", only_if_ended=True)
    assert [i for i, _ in state.dispatch(now_ms=T0 + 1, capacity=10)] == ["live"]


def test_a_dispatch_not_confirmed_sent_is_handed_out_again(state: AdmissionState) -> None:
    assert state.admit(item("run", wscap=1), now_ms=T0, capacity=10) is None
    assert state.admit(item("w", wscap=1), now_ms=T0, capacity=10) == "workspace_concurrency"
    state.finish("run", only_if_ended=False)
    assert [i for i, _ in state.dispatch(now_ms=T0 + 1, capacity=10)] == ["w"]
    assert state.stale_dispatches(older_than_ms=30_000, now_ms=T0 + 20_000) == []
    assert state.stale_dispatches(older_than_ms=30_000, now_ms=T0 + 30_002) == [("w", ["w-t0", "w-t1", "w-t2"])]
    state.sent("w")
    assert state.stale_dispatches(older_than_ms=30_000, now_ms=T0 + 30_003) == []


def test_upkeep_finds_the_held_executions_that_ended_in_one_call(state: AdmissionState) -> None:
    for execution_id in ("e1", "e2", "e3"):
        assert state.admit(item(execution_id), now_ms=T0, capacity=100) is None
    state.redis.set("exec:e2:terminal", 5)
    assert state.ended_held_ids() == ["e2"]
    assert state.finish("e2", only_if_ended=True)
    assert state.ended_held_ids() == []
