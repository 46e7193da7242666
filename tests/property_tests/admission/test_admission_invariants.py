"""Random admits, ends and dispatches on the real Redis scripts: no scope ever holds more than its limit, no
execution is lost or held twice, and a workspace with waiting work is served within one turn of the others."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from app.services.admission.state import AdmissionState, Item
from tests.support import services

WORKSPACES = ("A", "B", "C")
WORKSPACE_CAP = {"A": 2, "B": 1, "C": 0}
CAPACITY = 3
NOW = 1_800_000_000_000


@pytest.fixture(scope="module")
def client() -> Iterator[redis.Redis]:
    with services.redis_database() as url:
        connection = redis.Redis.from_url(url)
        yield connection
        connection.close()


class Admission(RuleBasedStateMachine):
    """The model: which executions are held and which wait, per workspace in arrival order."""

    client: redis.Redis

    def __init__(self) -> None:
        super().__init__()
        self.client.flushdb()
        self.state = AdmissionState(self.client)
        self.held: dict[str, str] = {}
        self.waiting: dict[str, list[str]] = {ws: [] for ws in WORKSPACES}
        self.served_since: dict[str, int] = {}
        self.count = 0

    def _item(self, ws: str) -> Item:
        self.count += 1
        return Item(id=f"{ws}{self.count}", ws=ws, cred="", wscap=WORKSPACE_CAP[ws], credcap=0, rpm=0, tpm=0,
                    est=1, lease=10**9, deadline=10**15, task_ids=[])

    @rule(ws=st.sampled_from(WORKSPACES))
    def admit(self, ws: str) -> None:
        item = self._item(ws)
        if self.state.admit(item, now_ms=NOW, capacity=CAPACITY) is None:
            assert not self.waiting[ws], "a new execution overtook its workspace's queue"
            self.held[item.id] = ws
        else:
            self.waiting[ws].append(item.id)

    @rule(data=st.data())
    def finish_and_dispatch(self, data: st.DataObject) -> None:
        if self.held:
            victim = data.draw(st.sampled_from(sorted(self.held)))
            self.state.finish(victim, only_if_ended=False)
            del self.held[victim]
        for execution_id, _ in self.state.dispatch(now_ms=NOW, capacity=CAPACITY):
            ws = next(w for w in WORKSPACES if self.waiting[w] and self.waiting[w][0] == execution_id)
            for other in WORKSPACES:  # dispatches to others while `other` could have started
                eligible = self.waiting[other] and not self._full(other)
                self.served_since[other] = self.served_since.get(other, 0) + 1 if eligible and other != ws else 0
            self.waiting[ws].pop(0)  # FIFO per workspace
            self.held[execution_id] = ws

    def _full(self, ws: str) -> bool:
        cap = WORKSPACE_CAP[ws]
        return bool(cap) and sum(1 for w in self.held.values() if w == ws) >= cap

    @invariant()
    def limits_hold(self) -> None:
        assert sorted(self.state.held_ids()) == sorted(self.held)
        assert len(self.held) <= CAPACITY
        for ws, cap in WORKSPACE_CAP.items():
            if cap:
                assert sum(1 for w in self.held.values() if w == ws) <= cap

    @invariant()
    def nothing_lost(self) -> None:
        reasons = self.state.queued_by_reason()
        assert sum(reasons.values()) == sum(len(q) for q in self.waiting.values())

    @invariant()
    def fair_turns(self) -> None:
        """A workspace that could start waits at most one dispatch per other workspace (round robin)."""
        for ws, turns in self.served_since.items():
            assert turns <= len(WORKSPACES) - 1, (ws, turns)


def test_admission_invariants(client: redis.Redis) -> None:
    Admission.client = client
    run_state_machine_as_test(Admission, settings=settings(max_examples=50, stateful_step_count=40, deadline=None,
                                                           suppress_health_check=[HealthCheck.too_slow]))
