"""A separate process that takes admission slots, for the cross-process and SIGKILL tests:
`python -m tests.integration.admission.holder REDIS_URL PREFIX COUNT WSCAP LEASE_MS` prints each admitted id, then
`held` and sleeps (until killed)."""

from __future__ import annotations

import sys
import time

import redis

from app.services.admission.state import AdmissionState
from tests.integration.admission.conftest import item


def main() -> None:
    url, prefix, count, wscap, lease_ms = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    state = AdmissionState(redis.Redis.from_url(url))
    for n in range(count):
        if state.admit(item(f"{prefix}{n}", "shared", cred="key", wscap=wscap, credcap=wscap, lease=lease_ms),
                       now_ms=int(time.time() * 1000), capacity=1000) is None:
            print(f"{prefix}{n}", flush=True)
    print("held", flush=True)
    time.sleep(600)


if __name__ == "__main__":
    main()
