"""Cancel requests pushed to this process's LLM runs over Redis pub/sub, so a thousand waiting runs need not poll.

Each run used to ask Redis for its cancel flag between chunks (EXISTS every LLM_STOP_POLL_S): at 1,000 streams
that was as many round trips as the deltas themselves, and about a third of the stream loop's CPU
(docs/performance.md, section 7). Now POST /cancel also publishes the execution id on CANCEL_CHANNEL, one listener
thread per process hears it, and a run's should_stop() looks it up in memory. The flag in Redis stays the record:
every emit reports it, the run's lease check (about once a second when no event flows) reports it, and while the
listener is not subscribed the runs poll it as before.
"""

from __future__ import annotations

import logging
import threading
import time

import redis

from app.services.process_local import per_process
from app.services.streams import CANCEL_CHANNEL, client

log = logging.getLogger(__name__)

KEEP_S = 3_600.0  # an execution heard of stays cancelled this long (above any timeout_s: MAX_TIMEOUT_S is 25 min)
RETRY_S = 0.5


class CancelWatch:
    """One subscriber per process and Redis: remembers the execution ids whose cancel it heard."""

    def __init__(self, redis_client: redis.Redis) -> None:
        self._redis = redis_client
        self._heard: dict[str, float] = {}
        self._listening = False
        self._thread = threading.Thread(target=self._run, name="cancel-watch", daemon=True)
        self._thread.start()

    def cancelled(self, execution_id: str) -> bool | None:
        """True if its cancel was heard; None while not subscribed (the caller must poll Redis itself)."""
        if execution_id in self._heard:
            return True
        return False if self._listening else None

    def _run(self) -> None:
        """Subscribe, record every id published, resubscribe after any failure."""
        while True:
            pubsub = self._redis.pubsub()  # type: ignore[no-untyped-call]  # redis-py leaves it unannotated
            try:
                pubsub.subscribe(CANCEL_CHANNEL)
                while True:
                    message = pubsub.get_message(timeout=30.0)
                    if message is None:
                        continue
                    if message["type"] == "subscribe":
                        self._listening = True  # from here on nothing published is missed
                    elif message["type"] == "message":
                        self._hear(message["data"])
            except Exception:  # noqa: BLE001 - the listener must outlive any error; runs poll meanwhile
                self._listening = False
                log.warning("cancel watch lost its subscription; runs poll the flag until it is back", exc_info=True)
                time.sleep(RETRY_S)
            finally:
                pubsub.close()

    def _hear(self, data: bytes | str) -> None:
        now = time.monotonic()
        execution_id = data.decode() if isinstance(data, bytes) else data
        self._heard[execution_id] = now
        if len(self._heard) % 1024 == 0:  # forget old ones now and then (cancels are rare)
            self._heard = {key: at for key, at in self._heard.items() if now - at < KEEP_S}


def cancel_watch(redis_url: str) -> CancelWatch:
    """This process's watch on the Redis at `redis_url`, started on first use (a forked child starts its own)."""
    return per_process("cancel_watch", (redis_url,), lambda: CancelWatch(client(redis_url)))
