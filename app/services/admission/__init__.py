"""Admission control: per-credential and per-workspace limits, fair sharing between workspaces, 429s honoured,
daily token budgets (DESIGN.md, "Limits, fairness and budgets"; docs/decisions.md, "Admission control")."""

from app.services.admission.service import (
    Admitted,
    Queued,
    acquire_for_llm,
    admit,
    dispatch,
    estimate_tokens,
    finished,
    on_rate_limited,
    paused,
    queued_of,
    release,
    state,
    upkeep,
)


def check_daily_budget(workspace_id: str) -> None:
    """429 rate_limited {limit: tokens_per_day, reset_at} for a workspace past its budget (at execute)."""
    from app.services.admission import budget

    budget.check(state().redis, workspace_id)


__all__ = [
    "Admitted",
    "Queued",
    "acquire_for_llm",
    "admit",
    "check_daily_budget",
    "dispatch",
    "estimate_tokens",
    "finished",
    "on_rate_limited",
    "paused",
    "queued_of",
    "release",
    "state",
    "upkeep",
]
