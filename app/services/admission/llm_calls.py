"""What the LLM step's retry loop calls: the execution's max_tokens in the provider options, the settings of
decide_retry, and the wait a retry plan asks for (a 429 pauses the whole credential)."""

from __future__ import annotations

from typing import Any

from flask import current_app

from app.services.admission.retry import RetryPlan, RetrySettings
from app.services.admission.service import on_rate_limited

MAX_TOKENS_OPTION = {"openai": "max_tokens", "anthropic": "max_tokens", "scripted": "max_tokens"}


def with_max_tokens(provider: str, options: dict[str, Any], max_tokens: int | None) -> dict[str, Any]:
    """The execute field caps the reply; the smaller cap wins when the agent's options also set one."""
    name = MAX_TOKENS_OPTION.get(provider)
    if not max_tokens or name is None:
        return options
    current = options.get(name)
    return {**options, name: min(int(current), max_tokens) if current else max_tokens}


def retry_settings() -> RetrySettings:
    config = current_app.config
    return RetrySettings(max_attempts=int(config["LLM_MAX_ATTEMPTS"]), base_s=float(config["LLM_RETRY_BASE_S"]),
                         cap_s=float(config["LLM_RETRY_CAP_S"]))


def wait_for(plan: RetryPlan, credential_id: str | None) -> float:
    """Seconds to wait before the retry: a 429 also pauses every execution on the credential."""
    if plan.rate_limited:
        return on_rate_limited(credential_id, plan.delay_s)
    return plan.delay_s
