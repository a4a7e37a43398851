"""A real `chunkcache serve` subprocess on a loopback port (session scoped), and httpx clients for it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from servers import free_port, wait_healthy

API_KEY = "test-key-7f3a"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
MAX_NEW_TOKENS = 8
MAX_PROMPT_TOKENS = 1024
MAX_BODY_BYTES = 256 * 1024
MAX_QUEUE = 2


class LiveServer:
    def __init__(self, cache_dir: Path, *extra: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = cache_dir / "server.log"
        cmd = [sys.executable, "-m", "chunkcache.cli", "--threads", "1", "serve", "--port", str(self.port),
               "--cache-dir", str(cache_dir), "--api-key", API_KEY, "--max-new-tokens", str(MAX_NEW_TOKENS),
               "--max-prompt-tokens", str(MAX_PROMPT_TOKENS), "--max-body-bytes", str(MAX_BODY_BYTES),
               "--max-queue", str(MAX_QUEUE), *extra]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        self.proc = subprocess.Popen(cmd, stdout=self.log.open("wb"), stderr=subprocess.STDOUT, env=env)

    def wait_ready(self, timeout: float = 120.0) -> "LiveServer":
        wait_healthy(self.proc, self.url, self.log, timeout)
        return self

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="session")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """`chunkcache serve` with the disk store under a temp cache dir, small limits, an API key."""
    server = LiveServer(tmp_path_factory.mktemp("api-cache")).wait_ready()
    yield server
    server.stop()


@pytest.fixture()
def client(live_server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live_server.url, headers=AUTH, timeout=120.0) as c:
        yield c
