"""GET /metrics for Prometheus (no key: scrapers sit inside the operator's network)."""

from __future__ import annotations

from flask import Blueprint, Response, current_app

from app.api.docs import api_doc
from app.metrics import metrics_response

bp = Blueprint("metrics", __name__)


@bp.get("/metrics")
@api_doc(summary="Prometheus metrics", responses={200: "text/plain"}, public=True, tags=["operations"])
def metrics() -> Response:
    return metrics_response(current_app._get_current_object())  # type: ignore[attr-defined]
