"""`chunkcache bench api` end to end on a tiny workload: a real server, every section of the JSON filled."""

import json

import pytest

from chunkcache.cli import main

pytestmark = pytest.mark.slow


def test_bench_api_small(tmp_path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "api.json"
    budget = 8 << 20
    assert main(["--threads", "1", "bench", "api", "--requests", "2", "--burst", "3", "--soak", "6",
                 "--soak-cpu-bytes", str(budget), "--ingest-examples", "0", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["overhead"]["requests"] == 2 and res["overhead"]["engine_ms_p50"] > 0
    assert res["burst"]["lost"] == 0 and sum(res["burst"]["status_counts"].values()) == 3
    soak = res["soak"]
    assert set(soak["rss_mib"]) == {"1", "6"} and soak["cpu_budget_bytes"] == budget
    assert 0 < soak["store_bytes_by_tier"]["cpu"] <= budget  # 12 fresh chunks of ~1.7 MB: evicted down to it
    assert soak["store_bytes_by_tier"]["disk"] > soak["store_bytes_by_tier"]["cpu"]  # the rest went to disk
