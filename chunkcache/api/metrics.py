"""Prometheus metrics of one app (its own CollectorRegistry: no process-global state).

Request counters and latency by route, TTFT by mode, reuse ratio, tokens reused/recomputed,
per-request tier hits, refused requests, request fallbacks by reason; store bytes, entries, hits and
misses per tier, store faults by reason and the model queue depth are read at scrape time.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
RATIO_BUCKETS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0)


class _StoreCollector:
    def __init__(self, store_stats: Callable[[], dict] | None, queue_depth: Callable[[], int]) -> None:
        self.store_stats = store_stats
        self.queue_depth = queue_depth

    def collect(self):  # type: ignore[no-untyped-def]
        q = GaugeMetricFamily("chunkcache_queue_depth", "requests waiting for the model worker")
        q.add_metric([], self.queue_depth())
        yield q
        if self.store_stats is None:
            return
        s = self.store_stats()
        size = GaugeMetricFamily("chunkcache_store_bytes", "KV bytes held per store tier", labels=["tier"])
        entries = GaugeMetricFamily("chunkcache_store_entries", "chunks held per store tier", labels=["tier"])
        hits = CounterMetricFamily("chunkcache_store_hits", "store lookups answered per tier", labels=["tier"])
        faults = CounterMetricFamily("chunkcache_store_faults", "unusable entries (op=get) and failed writes "
                                     "(op=put, write-backs included) by reason", labels=["op", "reason"])
        for op, key in (("get", "fallbacks"), ("put", "put_failures")):
            for reason, n in s.get(key, {}).items():
                faults.add_metric([op, reason], n)
        misses = CounterMetricFamily("chunkcache_store_misses", "store lookups missed per tier", labels=["tier"])
        for tier, t in s["tiers"].items():
            size.add_metric([tier], t["bytes"])
            entries.add_metric([tier], t["entries"])
            hits.add_metric([tier], t["hits"])
            misses.add_metric([tier], t["misses"])
        yield from (size, entries, hits, misses, faults)


class ApiMetrics:
    def __init__(self, store_stats: Callable[[], dict] | None, queue_depth: Callable[[], int]) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("chunkcache_http_requests", "HTTP requests", ["route", "method", "status"], registry=r)
        self.latency = Histogram("chunkcache_http_request_seconds", "HTTP request time (to response start)",
                                 ["route"], buckets=LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram("chunkcache_ttft_seconds", "prefill time to first token", ["mode"],
                              buckets=LATENCY_BUCKETS, registry=r)
        self.reuse = Histogram("chunkcache_reuse_ratio", "reused prompt tokens / prompt tokens per request",
                               buckets=RATIO_BUCKETS, registry=r)
        self.tokens = Counter("chunkcache_prompt_tokens", "prompt tokens by how their KV was obtained", ["kind"],
                              registry=r)
        self.tier_hits = Counter("chunkcache_request_tier_hits", "chunk KV lookups of requests answered per tier",
                                 ["tier"], registry=r)
        self.chunks = Counter("chunkcache_request_chunks", "chunks of requests by cache result", ["result"],
                              registry=r)
        self.refused = Counter("chunkcache_refused_requests", "requests refused for load", ["reason"], registry=r)
        self.fallbacks = Counter("chunkcache_request_fallbacks", "fallbacks reported in responses' stats.fallbacks "
                                 "by reason (corrupt entry recomputed, tier down, failed write, ...)", ["reason"],
                                 registry=r)
        r.register(_StoreCollector(store_stats, queue_depth))

    def observe_generation(self, stats: dict) -> None:
        self.ttft.labels(stats["mode"]).observe(stats["ttft_s"])
        self.reuse.observe(stats["reused_tokens"] / max(1, stats["prompt_tokens"]))
        self.tokens.labels("reused").inc(stats["reused_tokens"])
        self.tokens.labels("recomputed").inc(stats["recomputed_tokens"])
        self.tokens.labels("computed").inc(stats["prompt_tokens"] - stats["reused_tokens"])
        self.chunks.labels("hit").inc(stats["chunk_hits"])
        self.chunks.labels("miss").inc(stats["chunk_misses"])
        for tier, n in stats["tiers_hit"].items():
            self.tier_hits.labels(tier).inc(n)
        for fallback in stats.get("fallbacks", ()):
            self.fallbacks.labels(fallback.split(":", 1)[0]).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
