"""`make demo`: against the running stack, show an execution streaming live, agents messaging, the audit trail."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx

BASE_URL = os.environ.get("DEMO_URL", f"http://127.0.0.1:{os.environ.get('PORT', '8000')}")
STORY = (
    "Once the queue was durable and the confirms came back, nothing was ever lost again: every message "
    "found its inbox, in order, exactly once, and every stream picked up where it left off."
)


def api_key() -> str:
    """Use DEMO_API_KEY, or mint a key for workspace 'demo' the way an operator does."""
    key = os.environ.get("DEMO_API_KEY")
    if key:
        return key
    flask = os.path.join(os.path.dirname(sys.executable), "flask")
    out = subprocess.run([flask, "--app", "wsgi", "keys", "create", "--workspace", "demo"],
                         check=True, capture_output=True, text=True)
    return out.stdout.strip().splitlines()[-1]


def sse(response: httpx.Response) -> Iterator[tuple[str, dict[str, Any]]]:
    """Parse server-sent events as they arrive."""
    event, data = "message", list[str]()
    for line in response.iter_lines():
        if line.startswith(":"):
            continue
        if not line:
            if data:
                yield event, json.loads("\n".join(data))
            event, data = "message", []
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())


class LiveText:
    """Deltas printed as they arrive, under a progress line kept up to date (redrawn in place on a terminal)."""

    def __init__(self) -> None:
        self.text = ""
        self.deltas = 0
        self.started = time.perf_counter()
        self.first_ms: float | None = None
        self.tty = sys.stdout.isatty()
        print(self._progress("waiting for the first delta"))

    def _progress(self, state: str) -> str:
        first = f", first after {self.first_ms:.0f} ms" if self.first_ms is not None else ""
        return f"[{state}: {self.deltas} deltas, {time.perf_counter() - self.started:.2f}s{first}]"

    def _rows(self) -> int:
        """Terminal rows the text covers, so the cursor can climb back to the progress line."""
        width = max(1, shutil.get_terminal_size().columns)
        return sum(max(1, math.ceil(len(line) / width)) for line in self.text.split("\n"))

    def _redraw(self, state: str) -> None:
        if self.tty:  # save cursor, climb to the progress line, rewrite it, come back
            sys.stdout.write(f"\0337\033[{self._rows()}A\r\033[2K{self._progress(state)}\0338")
        sys.stdout.flush()

    def delta(self, text: str) -> None:
        self.deltas += 1
        if self.first_ms is None:
            self.first_ms = (time.perf_counter() - self.started) * 1000
        self.text += text
        sys.stdout.write(text)
        self._redraw("streaming")

    def reset(self, attempt: int) -> None:
        self.text += f"\n[retry, attempt {attempt}]\n"
        sys.stdout.write(f"\n[retry, attempt {attempt}]\n")
        self._redraw("streaming")

    def finish(self, outcome: str) -> None:
        self._redraw(outcome)
        print(f"\n\n{self._progress(outcome)}")


def main() -> int:
    client = httpx.Client(base_url=BASE_URL, headers={"Authorization": f"Bearer {api_key()}"}, timeout=30)
    ready = httpx.get(f"{BASE_URL}/readyz", timeout=5).json()
    print(f"stack at {BASE_URL}: {ready['status']}")
    writer = client.post("/agents", json={
        "name": "storyteller", "maturity_level": "INTERN",
        "llm": {"provider": "scripted", "options": {"text": STORY, "chunk_delay_ms": 60}},
    }).raise_for_status().json()
    reader = client.post("/agents", json={"name": "listener", "maturity_level": "SUPERVISED"}).raise_for_status().json()
    print(f"agents: {writer['name']} ({writer['id']}), {reader['name']} ({reader['id']})\n")

    print("execute storyteller with stream=true:\n")
    live = LiveText()
    with client.stream("POST", f"/agents/{writer['id']}/execute",
                       json={"message": "Tell the story", "stream": True}) as response:
        response.raise_for_status()
        execution_id = response.headers.get("X-Execution-Id")
        for name, data in sse(response):
            if name == "delta":
                live.delta(data["text"])
            elif name == "reset":
                live.reset(data["attempt"])
            elif name != "status":
                live.finish(name)
    execution = client.get(f"/executions/{execution_id}").json()
    print(f"execution {execution_id}: {execution['status']}, usage {execution['usage']}, "
          f"steps {[s['name'] + ':' + s['status'] for s in execution['steps']]}\n")

    print("messages:")
    for text in ("hello, listener", "did you get the story?", "bye"):
        sent = client.post(f"/agents/{writer['id']}/messages",
                           json={"to_agent_id": reader["id"], "message": text}).raise_for_status().json()
        print(f"  sent {sent['message_id']}: {sent['status']}")
    inbox = client.get(f"/agents/{reader['id']}/messages").json()
    for message in inbox["messages"]:
        print(f"  inbox #{message['seq']}: {message['message']!r} from {message['from_agent_id'][:8]}")

    print("\naudit trail (oldest first):")
    rows = client.get("/audit", params={"limit": 200}).json()["items"]
    for row in reversed(rows):
        print(f"  {row['id']:>5} {row['at']} {row['action']:<26} {row['result']:<6} {row['hash'][:12]}")
    print(f"\n/audit/verify: {client.get('/audit/verify').json()}")
    print(f"\nFlower: http://127.0.0.1:{int(BASE_URL.rsplit(':', 1)[1]) + 300}  "
          f"RabbitMQ: http://127.0.0.1:15672  status page: {BASE_URL}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
