"""`bench agents` end to end on a tiny workload: the JSON carries every mode's figures, dense is the reference."""

import pytest

from chunkcache.bench.agents import make_agents, run_agents
from chunkcache.bench.agents_long import run_long
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
    assert set(modes) == {"full", "prefix", "kvcomm+blend"}  # dense is full prefill's alias
    for m in modes.values():
        assert KEYS <= set(m) and m["turns"] == 4
    assert 0 < modes["prefix"]["reuse_rate"] < 1 and modes["prefix"]["tf_top1_agreement"] > 0.99  # exact reuse
    for m, rows in res["per_turn"].items():  # the per-round split adds up to the whole
        split = modes[m]["by_round"]
        assert [r["round"] for r in split] == [0, 1] and sum(r["turns"] for r in split) == len(rows)
        prompt = [sum(t["prompt_tokens"] for t in rows if t["round"] == k) for k in (0, 1)]
        whole = sum(r * p for r, p in zip(modes[m]["reuse_rate_by_round"], prompt, strict=True)) / sum(prompt)
        assert abs(whole - modes[m]["reuse_rate"]) < 1e-9
    assert modes["prefix"]["reuse_rate_by_round"][1] > 0
    assert modes["kvcomm+blend"]["anchors_added"] > 0  # a cold pool: every placeholder is measured
    assert res["anchors"]["kvcomm+blend"] > 0


def test_cli_rejects_bad_arguments(capsys):
    for flag, value, low in (("--agents", "1", 2), ("--max-new-tokens", "0", 1), ("--turns", "-1", 0),
                             ("--cpu-budget-mib", "0", 1)):
        with pytest.raises(SystemExit) as exc:  # refused by the parser, before the model loads
            main(["bench", "agents", flag, value, "--data", DATA])
        assert exc.value.code == 2 and f"argument {flag}: must be >= {low}, got {value}" in capsys.readouterr().err
    assert main(["bench", "agents", "--modes", "dense,turbo", "--limit", "1", "--warmup", "0", "--data", DATA]) == 2
    assert "unknown mode 'turbo'" in capsys.readouterr().err


def test_long_discussion_reports_bounded_memory(smollm):
    runner = ModelRunner(smollm.model, smollm.tokenizer)
    budget = 2 * 2**20
    res = run_long(runner, load_examples(DATA, 3), make_agents(2), turns=12, mode="kvcomm+blend", cpu_budget=budget,
                   passage_tokens=24, max_new=2, checkpoint=4, log=lambda *_: None)
    first, last = res["checkpoints"]
    assert res["turns"] == 12 and (first["turn"], last["turn"]) == (4, 12)
    assert 0 < last["store_bytes_by_tier"]["cpu"] <= budget and last["evictions"] > 0  # full, and evicting
    # after the checkpoint the process stops growing: 8 more turns (about 40 MiB of KV computed) add less
    # than the store's budget to the RSS peak and to the RSS itself (measured: about 1 MiB and 0.1 MiB)
    assert last["rss_peak_bytes"] > 0  # the measurement is live; a peak that did not grow at all is bounded too
    assert 0 <= res["rss_peak_growth_after_checkpoint_bytes"] <= 2 * budget, res
    assert last["rss_bytes"] - first["rss_bytes"] <= budget, (first, last)
    assert 0 < last["reuse_rate_so_far"] < 1


def test_run_agents_chat_layout(smollm):
    """--layout chat: the prompts are the chat model's layout (the model's chat template, a turn per message);
    with a cold pool, round 2 still reuses the earlier messages' KV (read back) and measures new anchors."""
    runner = ModelRunner(smollm.model, smollm.tokenizer)
    ex = load_examples(DATA, 1)
    res = run_agents(runner, ex, n_agents=2, rounds=2, modes=["kvcomm+epic"], passages=0, max_new=3, warmup=0,
                     log=lambda *_: None, layout="chat")
    m = res["modes"]["kvcomm+epic"]
    assert m["turns"] == 4 and m["by_round"][1]["reuse_rate"] > 0.2 and m["anchors_added"] > 0
    rows = res["per_turn"]["kvcomm+epic"]
    assert all("compute" in r["timings"] for r in rows)  # the placement profile of every turn
    from chunkcache.agents.workflows import Agent, chat_round_turn, round_turn

    agents = [Agent("a", "You answer."), Agent("b", "You check.")]
    chat, _ = chat_round_turn(smollm.tokenizer, agents[0], agents, "Why?", None, None)
    plain, _ = round_turn(agents[0], agents, "Why?", None, None)
    assert chat.frame is not None and plain.frame is None  # a whole conversation in the model's chat template
