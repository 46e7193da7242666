"""POST /executions/{id}/tool_outputs checked against the calls the execution waits for: all of them, once."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from app.services.errors import Conflict


def check_outputs(outputs: Sequence[dict[str, Any]], *, waiting_ids: Iterable[str],
                  known_ids: Iterable[str]) -> dict[str, Any]:
    """{tool_call_id: output} when the body answers exactly the waiting calls; else 409 naming the ids."""
    waiting = list(dict.fromkeys(waiting_ids))
    known = set(known_ids)
    answers: dict[str, Any] = {}
    repeated: list[str] = []
    for item in outputs:
        call_id = str(item["tool_call_id"])
        if call_id in answers:
            repeated.append(call_id)
        answers[call_id] = item.get("output")
    unknown = [call_id for call_id in answers if call_id not in known]
    answered = [call_id for call_id in answers if call_id in known and call_id not in waiting]
    missing = [call_id for call_id in waiting if call_id not in answers]
    if unknown or answered or missing or repeated:
        problems = []
        if unknown:
            problems.append(f"unknown: {', '.join(unknown)}")
        if answered:
            problems.append(f"not waiting for an output (already answered or not a client call): {', '.join(answered)}")
        if repeated:
            problems.append(f"given twice: {', '.join(repeated)}")
        if missing:
            problems.append(f"missing: {', '.join(missing)}")
        raise Conflict("tool_outputs must answer every waiting tool call exactly once; " + "; ".join(problems),
                       {"unknown": unknown, "not_waiting": answered, "repeated": repeated, "missing": missing,
                        "waiting": waiting})
    return answers
