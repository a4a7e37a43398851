"""Schemathesis fuzzing of the live server against its own OpenAPI schema: no 5xx on any input.

Few examples per operation (the model answers the valid ones); the server's small limits
(--max-new-tokens, --max-prompt-tokens, --max-queue) keep every call short.
"""

from __future__ import annotations

import pytest
import schemathesis
from conftest import AUTH, LiveServer
from hypothesis import HealthCheck, settings


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory):  # type: ignore[no-untyped-def]
    """Its own server (memory store), stopped with the module so fuzzed ingestion jobs end with it."""
    server = LiveServer(tmp_path_factory.mktemp("fuzz-cache"), "--store", "memory").wait_ready()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def api_schema(fuzz_server):  # type: ignore[no-untyped-def]
    return schemathesis.openapi.from_url(f"{fuzz_server.url}/openapi.json", headers=AUTH)


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=6, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_api_fuzz_no_server_errors(case) -> None:  # type: ignore[no-untyped-def]
    response = case.call(headers=AUTH, timeout=120)
    assert response.status_code < 500, f"{case.method} {case.path} -> {response.status_code}: {response.text[:500]}"
    if response.status_code in (400, 404, 413, 422):
        assert response.json()["detail"], response.text
