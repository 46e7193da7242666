"""A lean keep-alive HTTP/1.1 client for the load phases: the load generator shares the box with what it
measures, so it should cost as little CPU per request as the Celery client of the bare floor does."""

from __future__ import annotations

import http.client
import json
from typing import Any


class KeepAlive:
    """One persistent connection (one per load thread); raises on any status other than 200."""

    def __init__(self, host: str, port: int, headers: dict[str, str] | None = None) -> None:
        self.connection = http.client.HTTPConnection(host, port, timeout=30)
        self.headers = {"Content-Type": "application/json", **(headers or {})}

    def post(self, path: str, body: dict[str, Any] | None = None, headers: dict[str, str] | None = None) -> bytes:
        self.connection.request("POST", path, json.dumps(body or {}).encode(), {**self.headers, **(headers or {})})
        response = self.connection.getresponse()
        payload = response.read()
        if response.status != 200:
            raise RuntimeError(f"POST {path}: {response.status} {payload[:200]!r}")
        return payload
