"""Settings read from the environment once, with defaults that run on one machine."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

INSTANCE_DIR = Path(__file__).resolve().parent.parent / "instance"


def _int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def _float(name: str, default: float) -> float:
    return float(os.environ.get(name, default))


def from_environment() -> dict[str, Any]:
    """Build the Flask config mapping; every key can be overridden by create_app(config=...)."""
    return {
        "SQLALCHEMY_DATABASE_URI": os.environ.get(
            "DATABASE_URL", f"sqlite:///{INSTANCE_DIR / 'agent_runtime.db'}"
        ),
        "BROKER_URL": os.environ.get("BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//"),
        "REDIS_URL": os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
        "SECRET_KEY": os.environ.get("SECRET_KEY", "dev-secret-change-me"),
        "CREDENTIALS_KEY": os.environ.get("CREDENTIALS_KEY", ""),
        "RABBITMQ_MANAGEMENT_URL": os.environ.get(
            "RABBITMQ_MANAGEMENT_URL", "http://guest:guest@127.0.0.1:15672"
        ),
        "QUEUE_TYPE": os.environ.get("QUEUE_TYPE", "classic"),
        "MAX_HOPS": _int("MAX_HOPS", 8),
        "MAILBOX_MAX_ATTEMPTS": _int("MAILBOX_MAX_ATTEMPTS", 5),
        "MAILBOX_POLL_INTERVAL_S": _float("MAILBOX_POLL_INTERVAL", 0.2),
        "MAILBOX_SWEEP_INTERVAL_S": _float("MAILBOX_SWEEP_INTERVAL", 60.0),
        "MAILBOX_SWEEP_RATE": _float("MAILBOX_SWEEP_RATE", 100.0),
        "CONFIRM_TIMEOUT_S": _float("CONFIRM_TIMEOUT_S", 5.0),
        # The worker's AMQP heartbeat: how soon it notices a frozen broker node and fails over (Celery's default).
        "BROKER_HEARTBEAT_S": _float("BROKER_HEARTBEAT_S", 120.0),
        # Longest a Celery connection's socket read or write may block: a frozen node (SIGSTOP, a hung machine)
        # keeps its sockets open and answers nothing, so a confirm or close handshake with no deadline hung.
        "BROKER_SOCKET_TIMEOUT_S": _float("BROKER_SOCKET_TIMEOUT_S", 10.0),
        "MESSAGE_STREAM_POLL_S": _float("MESSAGE_STREAM_POLL_S", 0.5),
        "MAX_CONTENT_LENGTH": _int("MAX_CONTENT_LENGTH", 1024 * 1024),
        "RATE_LIMIT_PER_MINUTE": _int("RATE_LIMIT_PER_MINUTE", 0),
        "AUTH_CACHE_TTL_S": _float("AUTH_CACHE_TTL_S", 30.0),
        "SSE_HEARTBEAT_S": _float("SSE_HEARTBEAT_S", 15.0),
        "STREAM_RETENTION_S": _int("STREAM_RETENTION_S", 48 * 3600),
        "READINESS_TIMEOUT_S": _float("READINESS_TIMEOUT_S", 2.0),
        "STREAM_MAX_EVENTS": _int("STREAM_MAX_EVENTS", 100_000),
        "LLM_MAX_ATTEMPTS": _int("LLM_MAX_ATTEMPTS", 4),
        "LLM_RETRY_BASE_S": _float("LLM_RETRY_BASE_S", 0.5),
        "LLM_RETRY_CAP_S": _float("LLM_RETRY_CAP_S", 8.0),
        "LLM_CONNECT_TIMEOUT_S": _float("LLM_CONNECT_TIMEOUT_S", 10.0),
        "LLM_READ_TIMEOUT_S": _float("LLM_READ_TIMEOUT_S", 60.0),
        "SQLALCHEMY_ENGINE_OPTIONS": {"pool_pre_ping": True},
        # Connections per process (app/database.py): the LLM worker's 1,000 threads share these, because none of
        # them holds a connection while it streams; PostgreSQL's max_connections (100 by default) caps the sum
        # over every process (docs/performance.md, "Connections").
        "DATABASE_POOL_SIZE": _int("DATABASE_POOL_SIZE", 5),
        "DATABASE_MAX_OVERFLOW": _int("DATABASE_MAX_OVERFLOW", 10),
        "DATABASE_POOL_TIMEOUT_S": _float("DATABASE_POOL_TIMEOUT_S", 30.0),
        "DATABASE_IDLE_IN_TRANSACTION_TIMEOUT_S": _float("DATABASE_IDLE_IN_TRANSACTION_TIMEOUT_S", 60.0),
        "EXECUTION_SWEEP_INTERVAL_S": _float("EXECUTION_SWEEP_INTERVAL_S", 30.0),
        "EXECUTION_REQUEUE_AFTER_S": _float("EXECUTION_REQUEUE_AFTER_S", 60.0),
        # Longer than a step's retries (about 15 min, tasks/executions.py), so no live retry is overtaken.
        "EXECUTION_ABANDONED_AFTER_S": _float("EXECUTION_ABANDONED_AFTER_S", 1200.0),
        # Admission control (app/services/admission): 0 = unlimited.
        "WORKSPACE_MAX_CONCURRENCY": _int("WORKSPACE_MAX_CONCURRENCY", 0),
        "WORKSPACE_TOKENS_PER_DAY": _int("WORKSPACE_TOKENS_PER_DAY", 0),
        # Executions sent to the broker and not finished, across all workspaces; the rest wait in the fair queue.
        "EXECUTION_MAX_IN_FLIGHT": _int("EXECUTION_MAX_IN_FLIGHT", 1000),
        "EXECUTION_WAIT_TIMEOUT_S": _float("EXECUTION_WAIT_TIMEOUT_S", 3600.0),  # when the execute body sets none
        "ADMISSION_DISPATCH_INTERVAL_S": _float("ADMISSION_DISPATCH_INTERVAL_S", 0.2),
        # Reply tokens assumed for a rate-limit reservation when the execution sets no max_tokens.
        "ADMISSION_DEFAULT_COMPLETION_TOKENS": _int("ADMISSION_DEFAULT_COMPLETION_TOKENS", 256),
        # bench/fairness.py found every thread of a threads pool (-c 60) blocked on Celery's event dispatcher mutex
        # right after a restart with 60 redelivered tasks; 0 turns task events off (Flower then shows no tasks).
        "CELERY_TASK_EVENTS": os.environ.get("CELERY_TASK_EVENTS", "1") != "0",
        "WEBHOOK_SIGNING_KEY": os.environ.get("WEBHOOK_SIGNING_KEY", "dev-webhook-key-change-me"),
        # Hosts (names or IPs, comma-separated) a webhook may reach even on loopback or private addresses.
        "WEBHOOK_ALLOWED_HOSTS": os.environ.get("WEBHOOK_ALLOWED_HOSTS", ""),
        "WEBHOOK_MAX_ATTEMPTS": _int("WEBHOOK_MAX_ATTEMPTS", 4),
        "WEBHOOK_RETRY_BASE_S": _float("WEBHOOK_RETRY_BASE_S", 0.5),
        "WEBHOOK_RETRY_CAP_S": _float("WEBHOOK_RETRY_CAP_S", 8.0),
        "JSON_SORT_KEYS": False,
        # Tracing (app/tracing.py) is on only when an endpoint is set; the exporter reads the other OTEL_* itself.
        "OTEL_EXPORTER_OTLP_ENDPOINT": os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", ""),
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", ""),
        "TRACING_INSTRUMENTATIONS": os.environ.get("TRACING_INSTRUMENTATIONS", ""),  # "" = flask,celery,httpx
    }
