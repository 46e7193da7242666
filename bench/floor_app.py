"""The HTTP floor: a bare Flask view under the same gunicorn gevent web that only sends the bare three-task chain.

Whatever the real API does (auth, validation, the execution row and its audit rows, the event stream) costs on
top of this; so executions/s through the API cannot exceed this floor's requests/s, on any implementation.

    gunicorn --worker-class gevent bench.floor_app:app   (BROKER_URL and REDIS_URL from the environment)
"""

from __future__ import annotations

import os

from celery import Celery, chain
from flask import Flask

celery_app = Celery("floor")
celery_app.config_from_object("celeryconfig")  # the API's publish settings: JSON, persistent, confirmed
celery_app.conf.broker_url = os.environ["BROKER_URL"]

app = Flask(__name__)


@app.post("/floor/<token>")
def floor(token: str) -> dict[str, str]:
    """Send the bare chain and answer once the broker confirmed it, as POST /execute does."""
    sig = [celery_app.signature(name) for name in ("bench.first", "bench.second", "bench.last")]
    chain(sig[0].clone(args=(token,)), sig[1], sig[2], app=celery_app).apply_async()
    return {"token": token}


@app.get("/healthz")
def healthz() -> dict[str, str]:
    """Readiness for the bench's wait."""
    return {"status": "ok"}
