"""Health endpoints against the real services, and a 503 naming the one that is down."""

from __future__ import annotations

from flask import Flask

from app import create_app


def test_healthz_needs_no_key(app: Flask) -> None:
    response = app.test_client().get("/healthz")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok"}


def test_readyz_ok_with_all_services(app: Flask) -> None:
    response = app.test_client().get("/readyz")
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert body["status"] == "ok"
    assert {name for name, check in body["checks"].items() if check["ok"]} == {"database", "broker", "redis"}


def test_readyz_names_what_is_down(sqlite_url: str, redis_url: str) -> None:
    # Port 1 on loopback refuses at once: a broker and a Redis that are down, without touching the shared ones.
    app = create_app({
        "TESTING": True,
        "SQLALCHEMY_DATABASE_URI": sqlite_url,
        "BROKER_URL": "amqp://guest:guest@127.0.0.1:1//",
        "REDIS_URL": "redis://127.0.0.1:1/0",
        "READINESS_TIMEOUT_S": 0.5,
    })
    response = app.test_client().get("/readyz")
    assert response.status_code == 503
    checks = response.get_json()["checks"]
    assert checks["database"]["ok"] is True
    assert checks["broker"]["ok"] is False
    assert checks["redis"]["ok"] is False
