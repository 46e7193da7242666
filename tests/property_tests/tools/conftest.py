"""The tool-loop property tests build apps of their own (own vhosts): give the session's Celery default back."""

from tests.chaos.conftest import restore_celery_default

__all__ = ["restore_celery_default"]
