"""`chunkcache demo` end to end with the real model in bfloat16 on the CPU (issue 10's "done when")."""

import json
import re

import pytest

from chunkcache.bench.musique import DEFAULT_DATA
from chunkcache.cli import main


@pytest.mark.slow
def test_demo_runs_in_bfloat16_on_the_cpu(tmp_path, smollm_dir, capsys):
    ex = json.loads(DEFAULT_DATA.read_text())[0]
    data = tmp_path / "two_passages.json"
    data.write_text(json.dumps([dict(ex, ctxs=ex["ctxs"][:2])]))
    assert main(["--store", "memory", "--threads", "1", "demo", "--device", "cpu", "--dtype", "bfloat16",
                 "--data", str(data)]) == 0
    out = capsys.readouterr().out
    assert "precomputed KV of 2 chunks" in out
    reused, prompt = map(int, re.search(r"reused (\d+)/(\d+) prompt tokens", out).groups())
    assert 0 < reused < prompt  # chunk KV reused in bf16, the question computed
    answers = re.findall(r"TTFT  answer: '(.*)'", out)
    assert len(answers) == 2 and all(a.strip() for a in answers)
