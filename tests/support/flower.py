"""Flower as a subprocess on the test broker, reachable over its HTTP API."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.support.processes import stop_group
from tests.support.web import free_port

ROOT = Path(__file__).resolve().parents[2]
CELERY = str(Path(sys.executable).with_name("celery"))


class FlowerProcess:
    """`celery -A wsgi:celery_app flower` as the Procfile runs it, with the API open on loopback."""

    def __init__(self, *, broker_url: str, database_url: str, redis_url: str, management_url: str,
                 log_path: Path) -> None:
        self.port = free_port()
        self.log_path = log_path
        self.management_url = management_url
        self.env = {
            **os.environ,
            "BROKER_URL": broker_url,
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "FLOWER_UNAUTHENTICATED_API": "true",
        }
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> FlowerProcess:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [CELERY, "-A", "wsgi:celery_app", "flower", "--address=127.0.0.1", f"--port={self.port}",
             f"--broker-api={self.management_url.rstrip('/')}/api/"],
            cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"flower exited with {self.process.returncode}:\n{self.log()[-4000:]}")
            try:
                if httpx.get(f"{self.url}/healthcheck", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"flower not ready after {timeout}s:\n{self.log()[-4000:]}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        stop_group(self.process, 15)
