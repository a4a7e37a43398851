"""Fallbacks reach /metrics by reason: per response (stats.fallbacks) and from the store's own counters."""

from __future__ import annotations

from chunkcache.api.metrics import ApiMetrics

STATS = {"mode": "naive", "ttft_s": 0.1, "reused_tokens": 5, "recomputed_tokens": 0, "prompt_tokens": 9,
         "chunk_hits": 1, "chunk_misses": 2, "tiers_hit": {"disk": 1},
         "fallbacks": ["checksum_mismatch: chunk abc unusable on the disk tier (x)",
                       "checksum_mismatch: chunk def unusable on the disk tier (y)",
                       "remote_unavailable: chunk 123 unusable on the remote tier (down)"]}


def test_api_metrics_count_fallbacks_by_reason() -> None:
    store = {"tiers": {}, "fallbacks": {"corrupt": 2}, "put_failures": {"disk_full": 1}}
    m = ApiMetrics(lambda: store, lambda: 0)
    m.observe_generation(STATS)
    text = m.render().decode()
    assert 'chunkcache_request_fallbacks_total{reason="checksum_mismatch"} 2.0' in text
    assert 'chunkcache_request_fallbacks_total{reason="remote_unavailable"} 1.0' in text
    assert 'chunkcache_store_faults_total{op="get",reason="corrupt"} 2.0' in text
    assert 'chunkcache_store_faults_total{op="put",reason="disk_full"} 1.0' in text
