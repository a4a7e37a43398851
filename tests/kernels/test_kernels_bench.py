"""`chunkcache bench kernels` runs on a machine without a GPU (torch references only) and writes JSON."""

import json

import torch

from chunkcache.bench.kernels_bench import main
from chunkcache.kernels.sparse_attention_bf16 import bf16_kernel_available


def test_bench_runs_without_gpu(tmp_path, capsys):
    out = tmp_path / "kernels.json"
    assert main(["--models", "smollm2-135m", "--tokens", "96", "--reps", "1", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert [r["kernel"] for r in report["results"]] == ["rope_shift", "deviation_topk_kv",
                                                         "sparse_query_attention", "scatter_kv"]
    assert all(r["torch_ms"] > 0 for r in report["results"])
    if not report["triton"]:
        assert "GPU figures still open" in capsys.readouterr().out


def test_bench_reports_each_isa_build_and_the_dispatch(tmp_path):
    out = tmp_path / "kernels.json"
    assert main(["--models", "smollm2-135m", "--tokens", "300", "--reps", "1", "--isa", "native,x86-64-v4,x86-64-v2",
                 "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    att = next(r for r in report["results"] if r["kernel"] == "sparse_query_attention")
    assert set(att["cpp"]) == {"native", "x86-64-v4", "x86-64-v2"}
    for c in att["cpp"].values():
        assert ("ms" in c and c["vs_causal_share"] > 0) or "skipped" in c
    assert att["causal_share_ms"] > 0 and report["cpu"]["isa_flags"]
    if bf16_kernel_available():  # the bf16 variant: timed, its error bf16's rounding (a mispaired product is O(1))
        b = att["cpp_bf16"]
        assert b["ms"] > 0 and 0 < b["rel_err_vs_fp32"] < 1.5 * b["rel_err_of_bf16_operands"] + 1e-3
    else:
        assert "cpp_bf16" not in att
    summary = report["dispatch"]["smollm2-135m"]
    assert summary["kernels"] == "auto" and set(summary["classes"]) == {"sparse-short", "sparse-long", "sparse-xlong",
                                                                       "dense-short", "dense-long"}
    assert {c["choice"] for c in summary["classes"].values()} <= {"torch", "cpp"}


def test_prefill_speed_per_implementation():
    from chunkcache.bench.prefill_speed import prefill_speed

    res = prefill_speed("tiny", (2, 2, 1, 64), torch.float32, "cpu", 256)
    assert {"auto", "cpp", "torch"} <= set(res)
    assert res["cpp"]["attention"] == {"full": "torch", "precompute": "cpp", "blend": "cpp"}
    assert res["torch"]["attention"] == {"full": "torch", "precompute": "torch", "blend": "torch"}
    assert all(res[k]["full_prefill_tok_s"] > 0 and res[k]["precompute_tok_s"] > 0 for k in ("auto", "cpp", "torch"))
