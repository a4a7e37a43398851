"""`chunkcache demo` end to end with the real model in bfloat16 on the CPU (issue 10's "done when"); global flags
before a pass-through bench."""

import json
import re

import pytest

from chunkcache.bench.musique import DEFAULT_DATA
from chunkcache.cli import main


@pytest.mark.slow
def test_demo_runs_in_bfloat16_on_the_cpu_and_a_second_run_finds_its_entries(tmp_path, smollm_dir, capsys):
    """Twice over one disk store (the embedded defaults in a temp cache dir): the second run reads every plain
    and fused entry the first computed (the first closed its store, so its queued writes landed) and answers
    the same."""
    ex = json.loads(DEFAULT_DATA.read_text())[0]
    data = tmp_path / "two_passages.json"
    short = [dict(c, text=" ".join(c["text"].split()[:120])) for c in ex["ctxs"][:2]]  # bf16 is slow on AVX2 CPUs
    data.write_text(json.dumps([dict(ex, ctxs=short)]))
    argv = ["--cache-dir", str(tmp_path / "cache"), "--threads", "1", "demo", "--device", "cpu",
            "--dtype", "bfloat16", "--data", str(data), "--max-new-tokens", "8", "--json", str(tmp_path / "d.json")]
    assert main(argv) == 0
    first = capsys.readouterr().out
    new_tokens = json.loads((tmp_path / "d.json").read_text())["new_tokens"]  # the answers' length, both modes
    assert set(new_tokens) == {"full", "blend"} and all(0 < n <= 8 for n in new_tokens.values())
    assert "precomputed KV of 2 chunks" in first and "0 found, 2 precomputed" in first  # the default: fusion
    reused, prompt = map(int, re.search(r"reused (\d+)/(\d+) prompt tokens", first).groups())
    assert 0 < reused < prompt  # chunk KV reused in bf16, the question computed
    answers = re.findall(r"TTFT  answer: '(.*)'", first)
    assert len(answers) == 2 and all(a.strip() for a in answers)
    assert main(argv) == 0
    second = capsys.readouterr().out
    assert "2 found, 0 precomputed" in second and "(0 tokens beyond" in second
    assert re.findall(r"TTFT  answer: '(.*)'", second) == answers


def test_threads_before_a_passthrough_bench(tmp_path, capsys):
    """`chunkcache --threads N bench kernels ...`: --threads applies, the bench parses the rest; other engine
    flags before it are refused by name."""
    import torch

    before = torch.get_num_threads()
    out = tmp_path / "k.json"
    try:
        assert main(["--threads", "1", "bench", "kernels", "--models", "smollm2-135m", "--tokens", "96",
                     "--reps", "1", "--out", str(out)]) == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    assert {r["kernel"] for r in json.loads(out.read_text())["results"]} >= {"sparse_query_attention"}
    capsys.readouterr()
    assert main(["--device", "cpu", "bench", "kernels", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "only --threads applies" in err and "(got device)" in err
    assert main(["--threads", "zero", "bench", "kernels"]) == 2
    assert "--threads must be a positive integer" in capsys.readouterr().err
