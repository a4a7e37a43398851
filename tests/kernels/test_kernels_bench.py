"""`chunkcache bench kernels` runs on a machine without a GPU (torch references only) and writes JSON."""

import json

from chunkcache.bench.kernels_bench import main


def test_bench_runs_without_gpu(tmp_path, capsys):
    out = tmp_path / "kernels.json"
    assert main(["--models", "smollm2-135m", "--tokens", "96", "--reps", "1", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert [r["kernel"] for r in report["results"]] == ["rope_shift", "deviation_topk_kv",
                                                         "sparse_query_attention", "scatter_kv"]
    assert all(r["torch_ms"] > 0 for r in report["results"])
    if not report["triton"]:
        assert "GPU figures still open" in capsys.readouterr().out
