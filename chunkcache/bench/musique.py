"""MuSiQue-format examples: {ctxs: [{title, text}], question, answers}."""

from __future__ import annotations

from pathlib import Path

from chunkcache.bench.json_file import read_json

DEFAULT_DATA = Path(__file__).resolve().parents[1] / "data" / "musique_dev.json"  # bundled: 40 examples, CC BY 4.0


def load_examples(path: str | Path, limit: int | None = None) -> list[dict]:
    data = read_json(path)
    if not isinstance(data, list) or not data:
        raise ValueError(f"{path}: expected a non-empty JSON list of examples")
    for i, ex in enumerate(data):
        if not isinstance(ex, dict):
            raise ValueError(f"{path}: example {i} is not an object")
        for field in ("ctxs", "question", "answers"):
            if field not in ex:
                raise ValueError(f"{path}: example {i} has no {field!r}")
    return data[:limit] if limit else data


def passage_text(ctx: dict) -> str:
    """One chunk per passage: its title, then its text."""
    return f"{ctx.get('title', '')}\n{ctx['text']}\n\n"
