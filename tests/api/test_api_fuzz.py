"""Schemathesis fuzzing of the live server against its own OpenAPI schema: no 5xx on any input.

Cases come from schemathesis' hypothesis strategies per operation, driven by a plain test (its pytest
plugin reaches into pytest internals and breaks across pytest releases). Few examples per operation (the
model answers the valid ones); the server's small limits keep every call short.
"""

from __future__ import annotations

import pytest
import schemathesis
from api_helpers import AUTH, ApiServer
from hypothesis import HealthCheck, given, settings

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory):  # type: ignore[no-untyped-def]
    """Its own server (memory store), stopped with the module so fuzzed ingestion jobs end with it."""
    server = ApiServer(tmp_path_factory.mktemp("fuzz-cache"), "--store", "memory").wait_ready()
    yield server
    server.stop()


def test_api_fuzz_no_server_errors(fuzz_server) -> None:  # type: ignore[no-untyped-def]
    schema = schemathesis.openapi.from_url(f"{fuzz_server.url}/openapi.json", headers=AUTH)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 8, [op.label for op in operations]
    calls: dict[str, int] = {}

    for op in operations:
        @given(case=op.as_strategy())
        @settings(max_examples=6, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
                  database=None)
        def check(case) -> None:  # type: ignore[no-untyped-def]
            response = case.call(headers=AUTH, timeout=120)
            calls[op.label] = calls.get(op.label, 0) + 1
            assert response.status_code < 500, \
                f"{case.method} {case.path} -> {response.status_code}: {response.text[:500]}"
            if response.status_code in (400, 404, 413, 422):
                body = response.json()
                assert (body["error"]["message"] if case.path.startswith("/v1/") else body["detail"]), response.text

        check()
    assert set(calls) == {op.label for op in operations}
