"""GET /: one page where a person picks an agent, sends a message and watches the stream live."""

from __future__ import annotations

from flask import Blueprint, Response, current_app

from app.api.docs import api_doc

bp = Blueprint("ui", __name__)


@bp.get("/")
@api_doc(summary="Status page (HTML)", responses={200: "text/html"}, public=True, tags=["operations"])
def index() -> Response:
    return current_app.send_static_file("index.html")
