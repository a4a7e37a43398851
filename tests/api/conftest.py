"""A real `chunkcache serve` subprocess on a loopback port (session scoped), and httpx clients for it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from chunkcache.bench.live_server import LiveServer

API_KEY = "test-key-7f3a"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
MAX_NEW_TOKENS = 8
MAX_PROMPT_TOKENS = 1024
MAX_BODY_BYTES = 256 * 1024
MAX_QUEUE = 2


class ApiServer(LiveServer):
    """`chunkcache serve` with the API tests' key and small limits, cache and log under cache_dir; started."""

    def __init__(self, cache_dir: Path, *extra: str) -> None:
        super().__init__(["--threads", "1", "--cache-dir", str(cache_dir), "--api-key", API_KEY, "--max-new-tokens",
                          str(MAX_NEW_TOKENS), "--max-prompt-tokens", str(MAX_PROMPT_TOKENS), "--max-body-bytes",
                          str(MAX_BODY_BYTES), "--max-queue", str(MAX_QUEUE), *extra], Path(cache_dir) / "server.log",
                         env={"OMP_NUM_THREADS": "1"})
        self.start()


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
