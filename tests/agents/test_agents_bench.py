"""`bench agents` end to end on a tiny workload: the JSON carries every mode's figures, dense is the reference."""

import json

from chunkcache.agents.bench import run_agents
from chunkcache.bench.musique import DEFAULT_DATA, load_examples
from chunkcache.cli import main
from chunkcache.runner.runner import ModelRunner

DATA = str(DEFAULT_DATA)  # bundled with the package
KEYS = {"ttft_s_median", "reuse_rate", "tf_top1_agreement", "tf_kl_mean", "fidelity_f1_mean", "first_token_agreement",
        "ttft_speedup_vs_dense_median"}


def test_run_agents_small(smollm):
    runner = ModelRunner(smollm.model, smollm.tokenizer)
    ex = load_examples(DATA, 1)
    res = run_agents(runner, ex, n_agents=2, rounds=2, modes=["dense", "prefix", "kvcomm+blend"], passages=0,
                     max_new=3, warmup=0, log=lambda *_: None)
    modes = res["modes"]
    assert set(modes) == {"dense", "prefix", "kvcomm+blend"}
    for m in modes.values():
        assert KEYS <= set(m) and m["turns"] == 4
    assert 0 < modes["prefix"]["reuse_rate"] < 1 and modes["prefix"]["tf_top1_agreement"] > 0.99  # exact reuse
    assert modes["kvcomm+blend"]["anchors_added"] > 0  # a cold pool: every placeholder is measured
    assert res["anchors"]["kvcomm+blend"] > 0


def test_cli_rejects_bad_arguments(capsys):
    assert main(["bench", "agents", "--agents", "1", "--data", DATA]) == 2
    assert "--agents must be >= 2" in capsys.readouterr().err
    assert main(["bench", "agents", "--modes", "dense,turbo", "--limit", "1", "--warmup", "0", "--data", DATA]) == 2
    assert "unknown mode 'turbo'" in capsys.readouterr().err
