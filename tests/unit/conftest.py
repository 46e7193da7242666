"""Fixtures shared by the unit tests."""

from tests.support.tracing import span_exporter

__all__ = ["span_exporter"]
