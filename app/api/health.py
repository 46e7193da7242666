"""Liveness and readiness probes (no key needed)."""

from __future__ import annotations

from flask import Blueprint, current_app

from app.api.docs import api_doc
from app.api.schemas import Health, Readiness
from app.services import health

bp = Blueprint("health", __name__)


@bp.get("/healthz")
@api_doc(summary="The process is up", responses={200: Health}, public=True, tags=["operations"])
def healthz() -> tuple[dict[str, str], int]:
    return {"status": "ok"}, 200


@bp.get("/readyz")
@api_doc(summary="Database, broker and Redis are reachable", responses={200: Readiness, 503: Readiness},
         public=True, tags=["operations"])
def readyz() -> tuple[dict[str, object], int]:
    report = health.readiness(
        broker_url=current_app.config["BROKER_URL"],
        redis_url=current_app.config["REDIS_URL"],
        timeout_s=current_app.config["READINESS_TIMEOUT_S"],
    )
    return report, 200 if report["status"] == "ok" else 503
