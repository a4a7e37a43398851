"""MuSiQue (the bundled 40 dev examples, chunkcache/data/musique_dev.json) as a task suite.

Splits: the bundled examples shuffled by random.Random(SPLIT_SEED); dev is the first half, test the second
(20 each, disjoint). --data FILE (MuSiQue format, bench/musique.py) is taken whole, in its own order.
"""

from __future__ import annotations

import random
from pathlib import Path

from chunkcache.bench.musique import DEFAULT_DATA, load_examples, passage_text
from chunkcache.bench.tasks.example import TaskExample, check_split

SPLIT_SEED = 21


def load(split: str = "dev", limit: int | None = None, data: str | Path | None = None) -> list[TaskExample]:
    records = load_examples(data or DEFAULT_DATA)
    ids = list(range(len(records)))
    if not data:
        random.Random(SPLIT_SEED).shuffle(ids)
        half = len(ids) // 2
        ids = ids[:half] if check_split(split) == "dev" else ids[half:]
    ids = ids[:limit] if limit else ids
    return [TaskExample(id=f"musique/{i}", chunks=tuple(passage_text(c) for c in records[i]["ctxs"]),
                        question=records[i]["question"], answers=tuple(records[i]["answers"])) for i in ids]
