"""Fixtures for the traced stack."""

from tests.support.fake_llm_servers import fake_llm_server

__all__ = ["fake_llm_server"]
