"""Task scores of one answer: SQuAD/HotpotQA exact match and F1 against gold, RULER's needle recall, and
agreement with full prefill's answer (the same normalisation: chunkcache.bench.metrics)."""

from __future__ import annotations

from chunkcache.bench.metrics import best_f1, normalize_answer, token_f1
from chunkcache.bench.tasks.suites import SCORES


def exact_match(prediction: str, answers: tuple[str, ...] | list[str]) -> float:
    """1.0 when the normalised prediction equals a normalised gold answer (HotpotQA's EM)."""
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(a) for a in answers))


def found_needles(prediction: str, needles: tuple[str, ...] | list[str]) -> list[str]:
    """The needles the prediction holds (case-insensitive substring, RULER's string match)."""
    pred = prediction.lower()
    return [n for n in needles if n.lower() in pred]


def needle_recall(prediction: str, needles: tuple[str, ...] | list[str]) -> float:
    """RULER's string_match_all for one sample, in [0, 1]: the share of needles found in the prediction."""
    if not needles:
        raise ValueError("needle_recall: no needles to find")
    return len(found_needles(prediction, needles)) / len(needles)


def needles_kept(prediction: str, full_prediction: str, needles: tuple[str, ...] | list[str]) -> dict[str, int]:
    """What an answer keeps of what full prefill's retrieved: needles_full, the needles full prefill's answer holds;
    needles_kept, how many of those this answer holds too (found_needles). Pooled over examples, kept / full
    measures a mode against full prefill where full's own recall is low."""
    found = found_needles(full_prediction, needles)
    return {"needles_full": len(found), "needles_kept": len(found_needles(prediction, found))}


def task_scores(kind: str, prediction: str, answers: tuple[str, ...] | list[str]) -> dict[str, float]:
    """{"task_score", ...}: f1 suites add "em"; recall suites score the needles."""
    if kind == "f1":
        return {"task_score": best_f1(prediction, list(answers)), "em": exact_match(prediction, answers)}
    if kind == "recall":
        return {"task_score": needle_recall(prediction, answers)}
    raise ValueError(f"score kind must be one of {SCORES}, got {kind!r}")


def agreement(text: str, full_text: str) -> dict[str, float]:
    """agreement_exact: the normalised answers are equal; agreement_f1: their token F1 (1.0 when both are
    empty after normalisation)."""
    a, b = normalize_answer(text), normalize_answer(full_text)
    f1 = token_f1(text, full_text) if b or a else 1.0
    return {"agreement_exact": float(a == b), "agreement_f1": f1}
