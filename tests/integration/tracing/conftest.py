"""Fixtures for the traced stack and the in-process tracing tests."""

from tests.support.fake_llm_servers import fake_llm_server
from tests.support.tracing import span_exporter

__all__ = ["fake_llm_server", "span_exporter"]
