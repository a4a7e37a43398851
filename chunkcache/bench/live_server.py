"""A live `chunkcache serve` subprocess on a free loopback port, and one streamed request against it.

`LiveServer` is the one way the benchmarks and the tests start a server: `python -m chunkcache serve --port P
<flags>`, output appended to `log`, ready once /healthz answers 200. The server gets the caller's environment
without CHUNKCACHE_API_KEY and CHUNKCACHE_DIR (its flags say which key and cache directory it uses), plus `env`.
`stream_request` sends one `POST /generate_with_chunks` with `stream: true` and times the SSE `token` events
(a 429 is retried with exponential backoff; the request's start stays the first attempt).
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import signal
import socket
import subprocess
import sys
import time
from itertools import pairwise
from collections.abc import Sequence
from pathlib import Path

import httpx

from chunkcache.bench.serve_load import Sample

BACKOFF_S = (0.05, 2.0)  # first and largest wait between 429 retries
MAX_RETRIES = 200


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@functools.cache
def serve_flags() -> str:
    """The help text of `chunkcache serve` (which flags this server has, e.g. --max-batch)."""
    return subprocess.run([sys.executable, "-m", "chunkcache", "serve", "--help"], capture_output=True, text=True,
                          check=True).stdout


class LiveServer:
    """`chunkcache serve --port P <flags>` on 127.0.0.1:P (P free unless given), output appended to `log`."""

    def __init__(self, flags: Sequence[str], log: Path, *, port: int | None = None,
                 env: dict[str, str] | None = None, startup_s: float = 300.0) -> None:
        self.port = port or free_port()
        self.log = Path(log)
        self.cmd = [sys.executable, "-m", "chunkcache", "serve", "--port", str(self.port), *flags]
        self.env = {k: v for k, v in os.environ.items() if k not in ("CHUNKCACHE_API_KEY", "CHUNKCACHE_DIR")}
        self.env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", **(env or {}))
        self.startup_s = startup_s
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "LiveServer":
        """Spawn the server (returns at once; `wait_ready` polls /healthz)."""
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(self.cmd, stdout=out, stderr=subprocess.STDOUT, env=self.env)
        return self

    def wait_ready(self, timeout_s: float | None = None) -> "LiveServer":
        """Poll /healthz until it answers 200. If the server exits or the time (default startup_s) runs out,
        stop it and raise RuntimeError with the log's tail."""
        deadline = time.monotonic() + (timeout_s or self.startup_s)
        try:
            while True:
                if self.proc is None or self.proc.poll() is not None or time.monotonic() > deadline:
                    code = None if self.proc is None else self.proc.poll()
                    raise RuntimeError(f"chunkcache serve not ready (exit code {code}; {' '.join(self.cmd)}):\n"
                                       f"{self.log.read_text(errors='replace')[-3000:]}")
                try:
                    if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                        return self
                except httpx.HTTPError:
                    pass
                time.sleep(0.25)
        except BaseException:
            self.stop()
            raise

    def __enter__(self) -> "LiveServer":
        return self.start().wait_ready()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self, kill: bool = False) -> None:
        """SIGINT (graceful shutdown) or, with `kill`, SIGKILL (kill -9); SIGKILL after 30 s either way."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGKILL if kill else signal.SIGINT)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def store_bytes(self) -> dict[str, float]:
        """KV bytes per store tier, from /metrics."""
        text = httpx.get(f"{self.url}/metrics", timeout=30).text
        return {line.split('tier="')[1].split('"')[0]: float(line.rsplit(" ", 1)[1])
                for line in text.splitlines() if line.startswith("chunkcache_store_bytes{")}


async def stream_request(client: httpx.AsyncClient, index: int, body: dict, t0: float) -> Sample:
    """Send body (stream forced on); the Sample's times are seconds since perf_counter() == t0.
    Raises RuntimeError on a status other than 200/429, an SSE `error` event, or a stream without `done`."""
    start = time.perf_counter() - t0
    retries, wait = 0, BACKOFF_S[0]
    while True:
        async with client.stream("POST", "/generate_with_chunks", json={**body, "stream": True}) as r:
            if r.status_code == 429 and retries < MAX_RETRIES:
                await r.aread()
                retries += 1
                await asyncio.sleep(wait)
                wait = min(BACKOFF_S[1], wait * 2)
                continue
            if r.status_code != 200:
                raise RuntimeError(f"request {index}: HTTP {r.status_code}: {(await r.aread()).decode()[:500]}")
            tokens: list[float] = []
            event = None
            async for line in r.aiter_lines():
                if line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:") and event == "token":
                    tokens.append(time.perf_counter() - t0)
                elif line.startswith("data:") and event == "error":
                    raise RuntimeError(f"request {index}: server error mid-stream: {line[5:].strip()}")
                elif line.startswith("data:") and event == "done":
                    end = time.perf_counter() - t0
                    stats = json.loads(line[5:])["stats"]
                    itl = [b - a for a, b in pairwise(tokens)]
                    return Sample(index, start, tokens[0] if tokens else end, end, itl, stats, retries)
            raise RuntimeError(f"request {index}: the stream ended without a `done` event")
