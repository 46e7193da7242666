"""Celery tasks of the execution chain and the chain builder; no Flask routes here."""
