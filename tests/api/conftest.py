"""A real `chunkcache serve` subprocess on a loopback port (session scoped), and httpx clients for it. The server
class and its limits live in api_helpers.py: `from conftest import` resolves to whichever conftest.py pytest
imported first under that name."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from api_helpers import AUTH, ApiServer


@pytest.fixture(scope="session")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    """`chunkcache serve` with the disk store under a temp cache dir, small limits, an API key."""
    server = ApiServer(tmp_path_factory.mktemp("api-cache")).wait_ready()
    yield server
    server.stop()


@pytest.fixture()
def client(live_server: ApiServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live_server.url, headers=AUTH, timeout=120.0) as c:
        yield c
