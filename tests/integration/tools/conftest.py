"""Fixtures for the tool tests: a real webhook receiver on loopback."""

from tests.support.webhook_receiver import webhook_receiver

__all__ = ["webhook_receiver"]
