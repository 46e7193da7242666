"""The mailbox consumer (`flask --app wsgi mailbox run`) as a subprocess that fault tests can SIGKILL and restart."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.support.processes import stop_group
from tests.support.worker import _die_with_parent

ROOT = Path(__file__).resolve().parents[2]
FLASK = str(Path(sys.executable).with_name("flask"))


class MailboxProcess:
    """One `flask mailbox run` at a time on the given services; logs appended to one file across restarts."""

    def __init__(self, *, database_url: str, broker_url: str, log_path: Path,
                 extra_env: dict[str, str] | None = None) -> None:
        self.log_path = log_path
        self.env = {
            **os.environ,
            "DATABASE_URL": database_url,
            "BROKER_URL": broker_url,
            "MAILBOX_POLL_INTERVAL": "0.02",
            "MAILBOX_SWEEP_INTERVAL": "0.5",
            "PYTHONUNBUFFERED": "1",
            **(extra_env or {}),
        }
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> MailboxProcess:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [FLASK, "--app", "wsgi", "mailbox", "run"], cwd=ROOT, env=self.env, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True,
                preexec_fn=_die_with_parent,  # noqa: PLW1509 - only prctl, safe before exec
            )
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        """SIGKILL, wherever it is in a drain (taken-but-unacked messages go back to the queue)."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def stop(self, timeout_s: float = 20.0) -> int | None:
        """SIGTERM (finishes the drain in progress); SIGKILL if it does not exit in time. The exit code."""
        if self.process is None:
            return None
        stop_group(self.process, timeout_s)
        return self.process.returncode
