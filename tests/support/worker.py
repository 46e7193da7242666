"""A real Celery worker as a subprocess of the test session, on the run's RabbitMQ, Redis and PostgreSQL.

By default one prefork worker consumes both queues (`executions` and the LLM step's `executions.llm`); the
Procfile's split (prefork for governance and persistence, a threads pool for the LLM step) is
`WorkerProcess(queues=GOVERNANCE_QUEUES)` plus `llm_worker(...)`.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from tests.support.processes import stop_group

ROOT = Path(__file__).resolve().parents[2]
CELERY = str(Path(sys.executable).with_name("celery"))

# Fast retries so the transient-failure tests take milliseconds, not seconds; webhooks may reach the tests'
# receivers on loopback, signed with the key those receivers check (tests/support/webhook_receiver.py).
ALL_QUEUES = "executions,executions.llm"
GOVERNANCE_QUEUES = "executions"
LLM_QUEUES = "executions.llm"
# What the Procfile sets for `worker-llm` (see there): polls sized for 1,000 threads, a bounded DB pool.
LLM_WORKER_ENV = {"LLM_STOP_POLL_S": "0.25", "DATABASE_POOL_SIZE": "10", "DATABASE_MAX_OVERFLOW": "10"}
TEST_ENV = {"LLM_RETRY_BASE_S": "0.05", "LLM_RETRY_CAP_S": "0.2", "PYTHONUNBUFFERED": "1",
            "WEBHOOK_ALLOWED_HOSTS": "127.0.0.1", "WEBHOOK_SIGNING_KEY": "webhook-test-signing-key",
            "WEBHOOK_RETRY_BASE_S": "0.05", "WEBHOOK_RETRY_CAP_S": "0.2"}


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the test process dies, so a killed pytest leaves no worker."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class WorkerProcess:
    """`celery -A wsgi:celery_app worker --pool POOL -Q QUEUES` in its own process group, logging to a file."""

    def __init__(self, *, database_url: str, broker_url: str, redis_url: str, log_path: Path,
                 concurrency: int = 2, extra_env: dict[str, str] | None = None,
                 include: list[str] | None = None, pool: str = "prefork", queues: str = ALL_QUEUES,
                 netns: str | None = None) -> None:
        self.log_path = log_path
        self.name = f"test-{uuid.uuid4().hex[:8]}@%h"
        self.env = {
            **os.environ,
            **TEST_ENV,
            "DATABASE_URL": database_url,
            "BROKER_URL": broker_url,
            "REDIS_URL": redis_url,
            **(extra_env or {}),
        }
        self.concurrency = concurrency
        self.pool = pool
        self.include = include or []
        self.queues = queues
        self.netns = netns  # run inside this network namespace (a second "host", tests/support/netns.py)
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> WorkerProcess:
        """Start and wait until the worker logs that it is ready (consuming)."""
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [*(["ip", "netns", "exec", self.netns] if self.netns else []),
             CELERY, "-A", "wsgi:celery_app", "worker", "--pool", self.pool, "-c", str(self.concurrency),
             "--loglevel", "INFO", "-n", self.name, "--without-gossip", "--without-mingle", "-Q", self.queues,
             *(["--include", ",".join(self.include)] if self.include else [])],
            cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=_die_with_parent,  # noqa: PLW1509 - only prctl, safe before exec
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"worker exited with {self.process.returncode}:\n{self.log()[-4000:]}")
            if " ready." in self.log()[offset:]:
                return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"worker not ready after {timeout}s:\n{self.log()[-4000:]}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        """SIGKILL the whole process group (main process and pool children), like a machine dying."""
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self, timeout: float = 20.0) -> None:
        """Warm shutdown (SIGTERM), then SIGKILL if it does not exit in time."""
        stop_group(self.process, timeout)


def llm_worker(*, database_url: str, broker_url: str, redis_url: str, log_path: Path, concurrency: int = 1000,
               extra_env: dict[str, str] | None = None) -> WorkerProcess:
    """The Procfile's `worker-llm`: a threads pool on the LLM step's queue only, with its pool-aware settings."""
    return WorkerProcess(database_url=database_url, broker_url=broker_url, redis_url=redis_url, log_path=log_path,
                         concurrency=concurrency, pool="threads", queues=LLM_QUEUES,
                         extra_env={**LLM_WORKER_ENV, **(extra_env or {})})
