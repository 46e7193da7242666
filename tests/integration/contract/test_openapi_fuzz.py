"""schemathesis over /openapi.json: no input makes the API answer 5xx or break its own schema."""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from flask import Flask
from hypothesis import HealthCheck, given, settings

from app import create_app
from tests.support.api import new_workspace_client

# Live streams follow forever by design; they are exercised by their own tests.
STREAMING_TAG = "streams"
# Opaque cursors and ids of rows that do not exist are schema-valid strings the API must refuse (404/422);
# every other check stays on, including negative_data_rejection (invalid input must be refused).
EXCLUDED = [schemathesis.checks.positive_data_acceptance]

# The spec is generated from the routes alone, so an app without services can serve it at collection time.
SCHEMA = schemathesis.openapi.from_wsgi(
    "/openapi.json", create_app({"TESTING": True, "SQLALCHEMY_DATABASE_URI": "sqlite://"})
).exclude(tag=STREAMING_TAG)
OPERATIONS = [result.ok() for result in SCHEMA.get_all_operations()]


@pytest.fixture(scope="module")
def fuzz_key(pg_app: Flask) -> str:
    return new_workspace_client(pg_app).key


# schemathesis's WSGI transport reads a response without closing it: a file-backed one (GET /, the status page
# sent with send_static_file) then leaks its file until the garbage collector reports it.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("operation", OPERATIONS, ids=[op.label for op in OPERATIONS])
def test_api_conforms(operation: Any, pg_app: Flask, fuzz_key: str) -> None:

    @given(case=operation.as_strategy())
    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def check(case: Any) -> None:
        case.call_and_validate(
            app=pg_app, headers={"Authorization": f"Bearer {fuzz_key}"}, excluded_checks=EXCLUDED
        )

    check()
