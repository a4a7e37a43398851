"""HotpotQA (distractor setting) from the RULER wheel: 10 paragraphs per question, as 10 chunks.

Data: long_context_eval/data/synthetic/json/hotpotqa.json, HotpotQA's dev distractor file (7,405
examples; CC BY-SA 4.0, see chunkcache/data/README.md). Each example: {_id, question, answer,
supporting_facts: [[title, sentence index]], context: [[title, [sentences]]]}.

Splits: the 7,345 examples with exactly 10 paragraphs, shuffled by random.Random(SPLIT_SEED); dev is the
first SPLIT_SIZE of that order, test the next SPLIT_SIZE (disjoint by construction). --data FILE (same
format) is taken whole, in its own order. Chunks keep the dataset's paragraph order: the supporting
paragraphs sit anywhere in the ten (`gold_positions` reports where).
"""

from __future__ import annotations

import random
from collections import Counter
from functools import cache
from pathlib import Path

from chunkcache.bench.json_file import read_json
from chunkcache.bench.tasks.example import TaskExample, check_split, wheel_data

SPLIT_SEED = 21  # issue 21
SPLIT_SIZE = 200
PARAGRAPHS = 10


def paragraph_text(title: str, sentences: list[str]) -> str:
    """One chunk per paragraph, laid out as MuSiQue's passages are (bench/musique.passage_text)."""
    return f"{title}\n{''.join(sentences).strip()}\n\n"


def to_example(raw: dict, where: str = "") -> TaskExample:
    """A TaskExample of one HotpotQA record; gold_chunks: the paragraphs named by supporting_facts."""
    for field in ("_id", "question", "answer", "context", "supporting_facts"):
        if field not in raw:
            raise ValueError(f"{where}: HotpotQA example has no {field!r}")
    titles = [title for title, _ in raw["context"]]
    gold = sorted({titles.index(t) for t, _ in raw["supporting_facts"] if t in titles})
    return TaskExample(id=str(raw["_id"]), chunks=tuple(paragraph_text(t, s) for t, s in raw["context"]),
                       question=raw["question"], answers=(raw["answer"],), gold_chunks=tuple(gold))


def split_ids(records: list[dict], split: str, seed: int = SPLIT_SEED, size: int = SPLIT_SIZE) -> list[int]:
    """Indices into records of `split`: the 10-paragraph records in a seeded order, dev then test."""
    eligible = [i for i, r in enumerate(records) if len(r.get("context", ())) == PARAGRAPHS]
    random.Random(seed).shuffle(eligible)
    start = {"dev": 0, "test": size}[check_split(split)]
    if len(eligible) < start + size:
        raise ValueError(f"HotpotQA: {len(eligible)} 10-paragraph examples, fewer than the {2 * size} of dev + test")
    return eligible[start:start + size]


@cache
def _records(path: Path) -> list[dict]:
    records = read_json(path)
    if not isinstance(records, list) or not records:
        raise ValueError(f"{path}: expected a non-empty JSON list of HotpotQA examples")
    return records


def load(split: str = "dev", limit: int | None = None, data: str | Path | None = None) -> list[TaskExample]:
    """The split's examples (bundled data), or the first `limit` of --data FILE in its own order."""
    path = Path(data) if data else wheel_data("hotpotqa.json")
    records = _records(path.resolve())
    ids = range(len(records)) if data else split_ids(records, split)
    ids = list(ids)[:limit] if limit else list(ids)
    return [to_example(records[i], f"{path} example {i}") for i in ids]


def gold_positions(examples: list[TaskExample]) -> dict:
    """Where the supporting paragraphs sit: a count per chunk index, and the share of examples whose gold
    chunks are exactly the first ones (0 and 1 for two-hop questions), among the examples that name gold chunks
    (None: none does, as in the bundled MuSiQue): low means position is no shortcut."""
    counts = Counter(i for ex in examples for i in ex.gold_chunks)
    named = [ex for ex in examples if ex.gold_chunks]
    first = sum(ex.gold_chunks == tuple(range(len(ex.gold_chunks))) for ex in named)
    return {"per_chunk_index": {str(k): counts[k] for k in sorted(counts)},
            "share_gold_first": first / len(named) if named else None}
