"""A 3-node RabbitMQ cluster with QUEUE_TYPE=quorum: lose the node that leads the queues mid-run.

Web (in process), worker and mailbox all get the multi-node BROKER_URL. A sequential sender sends confirmed
messages through the REST API and starts executions, retrying each 503 with the same message_id or
Idempotency-Key. The node leading the receiver's inbox and the executions queue is SIGKILLed (then started
again) or SIGSTOPped (then continued). Counted like a total-queue checker: lost, duplicated, out-of-order
messages; executions stuck or ended twice; the time from the fault to the next confirmed send and to the
next completed execution.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from app.services import coordination_clients
from coordination.errors import DeliveryError
from coordination.topology import DEAD_QUEUE, EXECUTIONS_QUEUE, LLM_QUEUE, inbox_queue_name
from tests.chaos.checks import message_counts, report, wait_for
from tests.chaos.executions import status_of, tally, wait_until_all_ended
from tests.chaos.messaging import inbox_holding
from tests.conftest import build_app
from tests.support import services
from tests.support.api import new_workspace_client
from tests.support.mailbox import MailboxProcess
from tests.support.rabbit_cluster import RabbitCluster, private_cluster
from tests.support.worker import WorkerProcess

CONFIRM_TIMEOUT_S = 2.0
REPLY = "cluster ok"
RETRY_PAUSE_S = 0.05  # the client's retry policy, not synchronisation
API_SENDS = 1000  # runs up to this many sends go through the REST API
SERVICE_ENV = {"QUEUE_TYPE": "quorum", "CONFIRM_TIMEOUT_S": str(CONFIRM_TIMEOUT_S), "BROKER_HEARTBEAT_S": "5",
               "BROKER_SOCKET_TIMEOUT_S": "5"}


@pytest.fixture(scope="module")
def cluster() -> Iterator[RabbitCluster]:
    with private_cluster() as running:
        yield running


@pytest.mark.parametrize("fault,sends,executions", [
    # A 3-node cluster boots in about a minute, so every scenario is make chaos's. make test covers quorum
    # queues on one node (tests/integration/coordination) and a frozen node's bounded waits
    # (tests/integration/workers/test_frozen_broker.py).
    pytest.param("kill", 200, 15, id="kill-quick", marks=[pytest.mark.slow]),
    pytest.param("kill", 10_000, 300, id="kill-10000", marks=[pytest.mark.slow, pytest.mark.timeout(1800)]),
    # The freeze takes some 45 s on top of the cluster's boot (a new leader needs the frozen node's ticks to stop
    # for net_ticktime), too long for make test: its quick variant there is tests/integration/workers/
    # test_frozen_broker.py (every bounded wait against a frozen proxy, about 8 s).
    pytest.param("freeze", 200, 15, id="freeze-200", marks=[pytest.mark.slow]),
    pytest.param("freeze", 10_000, 300, id="freeze-10000", marks=[pytest.mark.slow, pytest.mark.timeout(1800)]),
])
def test_losing_the_leader_node_loses_nothing(fault: str, sends: int, executions: int, cluster: RabbitCluster,
                                              redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                              ) -> None:
    for name, value in SERVICE_ENV.items():
        monkeypatch.setenv(name, value)
    with services.postgres_database(f"chaos_{services.run_token()}") as database_url:
        cluster.wait_whole()  # a previous scenario's victim has rejoined
        app = build_app(database_url, cluster.url, redis_url)
        app.config["CONFIRM_TIMEOUT_S"] = CONFIRM_TIMEOUT_S
        api = new_workspace_client(app)
        sender = api.create_agent(llm={"provider": "scripted", "options": {"text": REPLY}})
        receiver = api.create_agent()["id"]
        with app.app_context():
            coordination_clients.social().declare_inboxes([receiver])  # its queue (and leader) exist before the fault
        env = {"BROKER_URL": cluster.url, **SERVICE_ENV}
        worker = WorkerProcess(database_url=database_url, broker_url=cluster.url, redis_url=redis_url,
                               log_path=tmp_path / "worker.log", concurrency=4, extra_env=env).start()
        mailbox = MailboxProcess(database_url=database_url, broker_url=cluster.url, log_path=tmp_path / "mailbox.log",
                                 extra_env=env).start()
        run = uuid.uuid4().hex[:8]
        confirmed: list[str] = []
        accepted: dict[str, tuple[str, str]] = {}
        accepted_at: dict[str, float] = {}
        answers: Counter[str] = Counter()
        slowest = 0.0
        every = max(1, sends // executions)
        fault_at, heal_at = sends * 30 // 100, sends * 60 // 100
        faulted_at = faulted_wall = healed_at = first_send_after = 0.0
        victim = None

        def send(message_id: str, i: int) -> int:
            """The quick run sends through the REST API; the long one through the same SocialLayer the API
            uses (minus auth and audit), so 10,000 confirmed sends fit a shared 2-core machine."""
            if sends <= API_SENDS:
                response = api.post(f"/agents/{sender['id']}/messages",
                                    json={"to_agent_id": receiver, "message": {"i": i}, "message_id": message_id})
                assert response.status_code in (201, 503), response.get_json()
                return response.status_code
            with app.app_context():
                try:
                    coordination_clients.social().send_message(from_agent_id=sender["id"], to_agent_id=receiver,
                                                               message={"i": i}, message_id=message_id,
                                                               workspace_id=api.workspace_id)
                except DeliveryError:
                    return 503
            return 201

        try:
            # The first execution declares the executions queue; its leader and the inbox's are what we hit.
            first = api.post(f"/agents/{sender['id']}/execute", json={"message": "warm-up"}).get_json()
            wait_for(lambda: status_of(api, first["execution_id"]) == "completed", timeout_s=60, what="warm-up")
            types = cluster.queue_types()
            queue_types = {name: types.get(name)
                           for name in (inbox_queue_name(receiver), DEAD_QUEUE, EXECUTIONS_QUEUE, LLM_QUEUE)}
            for i in range(sends):
                if i == fault_at:
                    victim = cluster.leader_of(inbox_queue_name(receiver))
                    leads_executions = cluster.leader_of(EXECUTIONS_QUEUE).name == victim.name
                    victim.kill() if fault == "kill" else victim.freeze()
                    faulted_at, faulted_wall = time.monotonic(), time.time()
                elif i == heal_at and victim is not None:
                    victim.start() if fault == "kill" else victim.thaw()
                    healed_at = time.monotonic()
                message_id = f"{run}-{i:05d}"
                while True:
                    started = time.monotonic()
                    status = send(message_id, i)
                    slowest = max(slowest, time.monotonic() - started)
                    answers[f"send_{status}"] += 1
                    if status == 201:
                        confirmed.append(message_id)
                        break
                    assert time.monotonic() - started < 120
                    time.sleep(RETRY_PAUSE_S)
                if faulted_at and not first_send_after:
                    first_send_after = time.monotonic() - faulted_at
                if i % every == 0 and len(accepted) < executions:
                    key = f"{run}-exec-{i:05d}"
                    while True:
                        response = api.post(f"/agents/{sender['id']}/execute", json={"message": f"op {i}"},
                                            headers={"Idempotency-Key": key})
                        answers[f"execute_{response.status_code}"] += 1
                        if response.status_code == 200:
                            execution_id = response.get_json()["execution_id"]
                            accepted[execution_id] = (f"op {i}", REPLY)
                            accepted_at[execution_id] = time.monotonic()
                            break
                        assert response.status_code == 503, response.get_json()
                        time.sleep(RETRY_PAUSE_S)
            wait_until_all_ended(api, redis_url, accepted, timeout_s=180, what="every execution to end")
            inbox = wait_for(lambda: inbox_holding(api, receiver, len(confirmed)), timeout_s=120,
                             what="every confirmed message in the inbox") or []
            ended = tally(api, redis_url, accepted)
            finished = {e: api.get(f"/executions/{e}").get_json()["finished_at"] for e in accepted}
        finally:
            if victim is not None and fault == "freeze":
                victim.thaw()
            mailbox.stop()
            worker.stop()
            if victim is not None and fault == "freeze":
                victim.rejoin()  # after the counts: the next scenario starts from a whole cluster

    stored = [row["message_id"] for row in inbox]
    after_fault = [e for e, at in accepted_at.items() if at >= faulted_at]
    # Time to the first completed execution among those accepted after the fault (finished_at is wall clock).
    completed_after = sorted(datetime.fromisoformat(finished[e].replace("Z", "+00:00")).timestamp() - faulted_wall
                             for e in after_fault if finished[e])
    counts: dict[str, Any] = {
        "fault": fault,
        "victim_led_executions": leads_executions,
        "queue_types": queue_types,
        **dict(sorted(answers.items())),
        **message_counts(confirmed, stored),
        "executions": len(accepted),
        "executions_ended_once": ended.ended_once,
        "executions_stuck": ended.stuck,
        "executions_double_end": ended.double_terminal + ended.double_audit,
        "executions_wrong_output": ended.wrong_output,
        "statuses": dict(ended.statuses),
        "send_recovery_s": round(first_send_after, 2),
        "slowest_send_s": round(slowest, 2),
        "fault_lasted_s": round(healed_at - faulted_at, 2),
        "execution_recovery_s": round(completed_after[0], 2) if completed_after else None,
    }
    report(f"cluster-{fault}-{sends}", counts,
           ["lost", "duplicated", "out_of_order", "unexpected", "executions_stuck", "executions_double_end",
            "executions_wrong_output"])
    assert set(queue_types.values()) == {"quorum"}, queue_types
    assert ended.ended_once == len(accepted) and ended.statuses == {"completed": len(accepted)}
