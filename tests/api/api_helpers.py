"""Shared helpers of the API tests: sample chunks, SSE parsing."""

from __future__ import annotations

import json

import httpx

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
