"""Answer scoring (CacheBlend/SQuAD token F1) and teacher-forced agreement with full prefill."""

from __future__ import annotations

import re
import string
from collections import Counter

import torch


def normalize_answer(text: str) -> str:
    """Lower case, drop punctuation, articles and extra white space (SQuAD / CacheBlend)."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def token_f1(prediction: str, truth: str) -> float:
    pred, gold = normalize_answer(prediction).split(), normalize_answer(truth).split()
    common = Counter(pred) & Counter(gold)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(gold)
    return 2 * precision * recall / (precision + recall)


def best_f1(prediction: str, answers: list[str]) -> float:
    return max((token_f1(prediction, a) for a in answers), default=0.0)


def teacher_forced(ref_logits: torch.Tensor, logits: torch.Tensor) -> tuple[float, float]:
    """(top-1 agreement, mean KL(ref || mode)) over positions. Both [T, vocab]."""
    if ref_logits.shape != logits.shape:
        raise ValueError(f"logit shapes differ: {tuple(ref_logits.shape)} vs {tuple(logits.shape)}")
    agree = (ref_logits.argmax(-1) == logits.argmax(-1)).float().mean()
    lp, lq = ref_logits.float().log_softmax(-1), logits.float().log_softmax(-1)
    kl = (lp.exp() * (lp - lq)).sum(-1).clamp_min(0).mean()  # KL >= 0; float rounding can dip below
    return float(agree), float(kl)
