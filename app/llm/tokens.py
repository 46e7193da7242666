"""A deterministic token estimate for providers that report no usage (and for the scripted one)."""

from __future__ import annotations


def count_tokens(*texts: str | None) -> int:
    """Whitespace-separated words across texts: stable, cheap and good enough for usage accounting."""
    return sum(len(text.split()) for text in texts if text)
