"""The audit hash covers every recorded field, so any edit changes it."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from app.services.audit import GENESIS_HASH, row_digest

BASE: dict[str, Any] = {
    "prev_hash": GENESIS_HASH,
    "at": datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC),
    "workspace_id": "w",
    "actor": "key:ar_x",
    "agent_id": "a",
    "execution_id": None,
    "action": "agent.created",
    "result": "ok",
    "details": {"name": "n"},
}


def test_naive_and_aware_utc_hash_alike() -> None:
    naive = {**BASE, "at": BASE["at"].replace(tzinfo=None)}
    assert row_digest(**naive) == row_digest(**BASE)


@given(st.sampled_from(sorted(BASE)), st.text(min_size=1, max_size=10))
def test_changing_any_field_changes_the_hash(field: str, value: str) -> None:
    changed = dict(BASE)
    if field == "at":
        changed["at"] = BASE["at"].replace(microsecond=(BASE["at"].microsecond + 1) % 1_000_000)
    elif field == "details":
        changed["details"] = {"name": "n" + value}
    else:
        changed[field] = (BASE[field] or "") + value
    assert row_digest(**changed) != row_digest(**BASE)
