"""`bench store` runs end to end on tiny sizes and writes the keys the lead's CLI and docs expect."""

from __future__ import annotations

import json

from chunkcache.bench.store_bench import main


def test_store_bench_smoke(tmp_path, redis_url):
    out = tmp_path / "store.json"
    assert main(["--json", str(out), "--tokens", "16", "--chunks", "2", "--layers", "2", "--reps", "1",
                 "--zipf-requests", "300", "--layer-compute-ms", "1", "--redis-url", redis_url,
                 "--dir", str(tmp_path)]) == 0
    res = json.loads(out.read_text())
    for key in ("cpu_get_vs_copy", "disk_read_vs_dd", "put", "redis", "eviction_zipf", "compression", "layer_stream"):
        assert key in res
    assert res["cpu_get_vs_copy"] > 0 and res["disk_read_vs_dd"] > 0
    assert res["compression"]["float32"]["ratio"] > 1.5
    assert res["redis"]["get_ms_per_chunk"] > 0
