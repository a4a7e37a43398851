"""Attention dispatch by measurement: the fastest candidate per shape class, cached per machine, forced by name."""

import os
import time

import pytest
import torch

from chunkcache.kernels import attention_dispatch, sparse_attention
from chunkcache.kernels.attention_dispatch import (SHAPE_CLASSES, AttentionDispatch, AttentionShape, Decision,
                                                   candidates, classify)
from chunkcache.kernels.sparse_attention import plan_sparse_attention

SHAPE = AttentionShape(n_heads=3, n_kv=1, head_dim=64, dtype="float32", device="cpu", threads=1, max_positions=2048)
FITS_2048 = {"sparse-short", "sparse-long", "dense-short", "dense-long"}  # sparse-xlong cut to sparse-long's 2048


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CHUNKCACHE_KERNEL_CACHE", str(tmp_path / "kernels"))
    return tmp_path / "kernels"


def test_measured_once_then_read_from_the_cache(private_cache, monkeypatch):
    assert candidates(SHAPE) == ["torch", "cpp"]
    first = AttentionDispatch.build("auto", SHAPE)
    assert first.source == "measured" and set(first.decisions) == FITS_2048
    assert first.summary()["cpp_threads"] in {"openmp", "std::thread"}
    assert first.describe().endswith(f"C++ threads: {first.cpp_threads}")
    for d in first.decisions.values():
        assert set(d.ms) == {"torch", "cpp"} and all(t > 0 for t in d.ms.values())
        assert d.choice == ("cpp" if d.speedup["cpp"] >= attention_dispatch.MARGIN else "torch")  # paired ratio
        assert d.speedup["torch"] == 1.0
    assert len(list(private_cache.glob("dispatch-attention-*.json"))) == 1

    def no_measuring(*a, **kw):
        raise AssertionError("a cached dispatch measured again")

    with monkeypatch.context() as m:  # not timed: loading the C++ build costs both builds alike
        m.setattr(attention_dispatch, "measure", no_measuring)
        m.setattr(attention_dispatch, "measure_builds", no_measuring)
        second = AttentionDispatch.build("auto", SHAPE)
    assert second.source == "cached" and second.decisions == first.decisions
    other = AttentionDispatch.build("auto", AttentionShape(**{**SHAPE.__dict__, "threads": 2}))
    assert other.source == "measured"  # another thread count is another decision


def _slowed(monkeypatch, name: str) -> None:
    """Make sparse_attention.<name> 50 ms slower per call (an implementation slow on this machine)."""
    real = getattr(sparse_attention, name)

    def slow(*a, **kw):
        time.sleep(0.05)
        return real(*a, **kw)

    monkeypatch.setattr(sparse_attention, name, slow)


def test_a_slow_kernel_loses_the_measurement(monkeypatch):
    """A C++ build that is slow on this machine (the AVX2 spill of issue 18) is measured and not chosen."""
    _slowed(monkeypatch, "sparse_query_attention_cpu")
    d = AttentionDispatch.build("auto", SHAPE)
    assert {x.choice for x in d.decisions.values()} == {"torch"}, d.summary()
    assert all(x.ms["cpp"] > 50 for x in d.decisions.values())


def test_a_fast_kernel_wins_the_measurement(monkeypatch):
    _slowed(monkeypatch, "sparse_query_attention_ref")
    d = AttentionDispatch.build("auto", SHAPE)
    assert {x.choice for x in d.decisions.values()} == {"cpp"}, d.summary()
    assert d.describe().startswith("attention: C++ kernel on this machine") and "x torch" in d.describe()


def test_choose_follows_the_decisions_by_class():
    decisions = {c.name: Decision("cpp" if c.name.startswith("sparse") else "torch", {"torch": 2.0, "cpp": 1.0})
                 for c in SHAPE_CLASSES}
    d = AttentionDispatch("auto", decisions, "measured")
    scattered = plan_sparse_attention(torch.arange(0, 6000, 10), 6000)  # 600 queries over 6000 keys
    assert classify(600, 5991, list(decisions)) == "sparse-xlong" and d.choose(scattered) == "cpp"
    assert classify(500, 3500, list(decisions)) == "sparse-long"
    assert classify(600, 5991, [n for n in decisions if n != "sparse-xlong"]) == "sparse-long"  # a 4K-context model
    fits_2048 = sorted(FITS_2048)  # a 2K-context model: sparse-long was measured at 2,048 keys, not 4,096
    assert classify(270, 1800, fits_2048) == "sparse-short" and classify(270, 1800, fits_2048, 2048) == "sparse-long"
    behind_prefix = plan_sparse_attention(torch.arange(64, 614), 614)  # a chunk precomputed behind a prefix
    assert d.choose(behind_prefix) == "torch"
    assert d.choose(plan_sparse_attention(torch.arange(300), 300)) == "torch"  # causal square: SDPA
    assert d.choose(plan_sparse_attention(torch.arange(5900, 5940), 5940)) == "torch"  # a short suffix
    assert AttentionDispatch("cpp").choose(behind_prefix) == "cpp"
    assert AttentionDispatch("torch").choose(scattered) == "torch"


def test_one_candidate_measures_nothing(private_cache):
    d = AttentionDispatch.build("auto", AttentionShape(**{**SHAPE.__dict__, "head_dim": 32}))  # no C++ for 32
    assert d.source == "single" and d.startup_s == 0.0 and list(private_cache.glob("dispatch-*")) == []
    assert {x.choice for x in d.decisions.values()} == {"torch"}


def test_short_context_models_measure_what_fits():
    """Classes are cut to the model's context; one too short for MIN_QUERIES scattered queries measures nothing."""
    d = AttentionDispatch.build("auto", AttentionShape(**{**SHAPE.__dict__, "max_positions": 700}))
    assert d.source == "measured" and set(d.decisions) == {"sparse-short", "dense-short", "dense-long"}  # 700 each
    tiny = AttentionDispatch.build("auto", AttentionShape(**{**SHAPE.__dict__, "max_positions": 64}))
    assert tiny.decisions == {}
    assert tiny.choose(plan_sparse_attention(torch.arange(0, 60, 2), 64)) == "torch"


def test_an_8k_context_model_measures_its_longest_prompts_at_their_length():
    """A 6K-token prompt is classed with 8,192 keys, not 4,096, where kernel and torch can rank differently."""
    classes = {c.name: c for c in attention_dispatch._classes(AttentionShape(**{**SHAPE.__dict__,
                                                                                "max_positions": 8192}))}
    assert set(classes) == FITS_2048 | {"sparse-xlong"}
    assert (classes["sparse-xlong"].kv_len, classes["sparse-xlong"].queries) == (8192, 1228)  # 15% scattered
    assert classes["sparse-long"].kv_len == 4096
    at_4k = attention_dispatch._classes(AttentionShape(**{**SHAPE.__dict__, "max_positions": 4096}))
    assert "sparse-xlong" not in {c.name for c in at_4k}  # cut to 4,096: sparse-long measures it


def test_builds_are_timed_on_the_longest_scattered_class(monkeypatch):
    portable = _portable_or_skip()
    timed = []
    real = attention_dispatch._rounds
    monkeypatch.setattr(attention_dispatch, "_rounds", lambda shape, c, calls: timed.append(c) or real(shape, c, calls))
    classes = attention_dispatch._classes(AttentionShape(**{**SHAPE.__dict__, "max_positions": 1536}))
    march, builds = attention_dispatch.measure_builds(SHAPE, classes, ["native", portable])
    assert [c.name for c in timed] == ["sparse-long"] and timed[0].kv_len == 1536
    assert set(builds) == {"native", portable} and march in builds


def test_an_unwritable_cache_only_costs_a_remeasure(private_cache):
    private_cache.mkdir(mode=0o700)
    private_cache.chmod(0o777)  # unsafe: refused for reading and writing decisions
    assert AttentionDispatch.build("auto", SHAPE).source == "measured"
    assert list(private_cache.glob("dispatch-*")) == []
    assert attention_dispatch.AttentionDispatch.build("auto", SHAPE).source == "measured"


def test_a_new_decision_prunes_unused_ones_and_a_read_one_is_stamped(private_cache):
    private_cache.mkdir(mode=0o700)
    month_ago = time.time() - 31 * 86400
    stale = private_cache / "dispatch-attention-0123456789abcdef.json"  # another torch's or shape's, unused since
    stale.write_text("{}")
    os.utime(stale, (month_ago, month_ago))
    assert AttentionDispatch.build("auto", SHAPE).source == "measured"
    assert not stale.exists()
    (own,) = private_cache.glob("dispatch-attention-*.json")
    os.utime(own, (month_ago, month_ago))
    assert AttentionDispatch.build("auto", SHAPE).source == "cached"
    assert time.time() - own.stat().st_mtime < 600  # read: stamped, so the next prune keeps it


def _portable_or_skip() -> str:
    builds = attention_dispatch.cpp_builds()
    if len(builds) < 2:
        pytest.skip("no portable C++ build runs on this CPU besides native")
    assert builds[0] == "native"
    return builds[1]


def _slowed_build(monkeypatch, slow: str) -> list[str]:
    """The C++ build `slow` 50 ms slower per call (a build the compiler tuned badly for this CPU). Returns the
    list of the builds called, in order."""
    real = sparse_attention.sparse_query_attention_cpu
    called: list[str] = []

    def cpu(*a, march="native", **kw):
        called.append(march)
        if march == slow:
            time.sleep(0.05)
        return real(*a, march=march, **kw)

    monkeypatch.setattr(sparse_attention, "sparse_query_attention_cpu", cpu)
    return called


def test_a_faster_portable_build_replaces_native_and_is_cached(private_cache, monkeypatch):
    portable = _portable_or_skip()
    called = _slowed_build(monkeypatch, "native")
    in_classes: list[str] = []  # the builds the per-class timing called (not a time threshold: other work may run)
    real = attention_dispatch.measure

    def measure(*a, **kw):
        start = len(called)
        out = real(*a, **kw)
        in_classes.extend(called[start:])
        return out

    monkeypatch.setattr(attention_dispatch, "measure", measure)
    d = AttentionDispatch.build("auto", SHAPE)
    assert d.cpp_march == portable and d.cpp_builds["native"] == 1.0
    assert d.cpp_builds[portable] >= attention_dispatch.MARGIN
    assert in_classes and set(in_classes) == {portable}  # the classes were timed on the portable build
    assert f"({portable} build" in d.describe() and d.summary()["cpp_march"] == portable
    again = AttentionDispatch.build("auto", SHAPE)
    assert again.source == "cached" and (again.cpp_march, again.cpp_builds) == (portable, d.cpp_builds)


def test_a_cached_build_that_no_longer_loads_runs_native(monkeypatch):
    portable = _portable_or_skip()
    _slowed_build(monkeypatch, "native")
    assert AttentionDispatch.build("auto", SHAPE).cpp_march == portable
    real = attention_dispatch.cpu_kernel_applies
    monkeypatch.setattr(attention_dispatch, "cpu_kernel_applies",
                        lambda q, k, v, march="native": march == "native" and real(q, k, v, march))
    d = AttentionDispatch.build("auto", SHAPE)
    assert d.source == "cached" and d.cpp_march == "native"  # not a request failing on a build that is gone


def test_native_stays_unless_another_build_is_faster(monkeypatch):
    portable = _portable_or_skip()
    _slowed_build(monkeypatch, portable)
    d = AttentionDispatch.build("auto", SHAPE)
    assert d.cpp_march == "native" and d.cpp_builds[portable] < 1.0 and "build," not in d.describe()


def test_the_runner_runs_the_chosen_build(monkeypatch):
    from chunkcache.runner.runner import ModelRunner
    from tiny_models import tiny_llama

    portable = _portable_or_skip()
    runner = ModelRunner(tiny_llama(hidden_size=256), kernels="cpp")  # head_dim 64: the C++ kernel takes it
    runner.attention = AttentionDispatch("cpp", cpp_march=portable)
    seen = []
    real = sparse_attention.sparse_query_attention_cpu
    monkeypatch.setattr(sparse_attention, "sparse_query_attention_cpu",
                        lambda *a, march="native", **kw: seen.append(march) or real(*a, march=march, **kw))
    ids = torch.arange(1, 200)
    hidden = []
    for r in (runner, ModelRunner(tiny_llama(hidden_size=256), kernels="torch")):
        cache = r.new_cache(256)
        r.extend(ids[:50], cache)  # a causal square: SDPA
        hidden.append(r.extend(ids[50:], cache))  # 149 queries behind a prefix: the C++ kernel under cpp
    assert seen and set(seen) == {portable}
    torch.testing.assert_close(hidden[0], hidden[1], atol=1e-4, rtol=1e-4)
