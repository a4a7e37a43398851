"""Shared helpers of the API tests: the server with their key and limits, sample chunks, SSE parsing."""

from __future__ import annotations

import json
from pathlib import Path

import httpx

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


CHUNKS = ["Paris is the capital and largest city of France.",
          "Berlin is the capital of Germany and its largest city.",
          "The Danube flows through Vienna, Budapest and Belgrade."]
QUERY = "What is the capital of France?"


def sse_events(response: httpx.Response) -> list[tuple[str, dict]]:
    """(event, data) pairs of a text/event-stream response read to the end."""
    out, event = [], None
    for line in response.iter_lines():
        if line.startswith("event: "):
            event = line[len("event: "):]
        elif line.startswith("data: "):
            out.append((event, json.loads(line[len("data: "):])))
    return out


def body(**overrides: object) -> dict:
    return {"chunks": list(CHUNKS), "query": QUERY, "max_tokens": 6, **overrides}
