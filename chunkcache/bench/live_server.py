"""A live `chunkcache serve` for load benchmarks, and one streamed request against it.

`LiveServer` runs `python -m chunkcache serve` in a subprocess on a free loopback port with its own cache
directory (a fresh store: CPU tier, disk tier, catalog), waits for /healthz, and stops it on exit.
`stream_request` sends one `POST /generate_with_chunks` with `stream: true` and times the SSE `token` events
(a 429 is retried with exponential backoff; the request's start stays the first attempt).
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import socket
import subprocess
import sys
import time
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
    """`chunkcache serve <flags>` on 127.0.0.1:<free port>, cache dir `workdir`, log in workdir/server.log."""

    def __init__(self, flags: list[str], workdir: Path, startup_s: float = 300) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = workdir / "server.log"
        self.cmd = [sys.executable, "-m", "chunkcache", "serve", "--port", str(self.port), "--cache-dir",
                    str(workdir), *flags]
        self.startup_s = startup_s
        self.proc: subprocess.Popen | None = None

    def start(self) -> "LiveServer":
        """Spawn the server (returns at once; `wait_ready` polls /healthz)."""
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(self.cmd, stdout=self.log.open("wb"), stderr=subprocess.STDOUT, env=env)
        return self

    def wait_ready(self) -> "LiveServer":
        """Poll /healthz until it answers 200; stop the server and raise if it exits or startup_s passes."""
        deadline = time.monotonic() + self.startup_s
        try:
            while True:
                if self.proc is None or self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"server did not start ({' '.join(self.cmd)}):\n{self.log.read_text()[-2000:]}")
                try:
                    if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                        return self
                except httpx.HTTPError:
                    time.sleep(0.25)
        except BaseException:
            self.stop()
            raise

    def __enter__(self) -> "LiveServer":
        return self.start().wait_ready()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

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
                    itl = [b - a for a, b in zip(tokens, tokens[1:])]
                    return Sample(index, start, tokens[0] if tokens else end, end, itl, stats, retries)
            raise RuntimeError(f"request {index}: the stream ended without a `done` event")
