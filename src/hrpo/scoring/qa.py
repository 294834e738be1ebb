"""Short QA answers: SQuAD normalisation, exact match and token F1 (HotpotQA's yes/no rule)."""

from __future__ import annotations

import re
import string
from collections import Counter

from .common import _strip_markdown, after_answer_phrase, last_boxed

_PUNCT = set(string.punctuation)


def normalize_qa(text: str) -> str:
    """SQuAD normalisation: lower-case, drop punctuation, drop the articles a/an/the, collapse whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def short_answer(text: str | None) -> str | None:
    r"""A short answer from an answer text: the last ``\boxed{}`` if any, else the text after the last
    'answer is'/'answer:'; markdown emphasis removed; first non-empty line; trailing period dropped."""
    if text is None:
        return None
    boxed = last_boxed(text)
    text = boxed if boxed is not None else after_answer_phrase(text)
    text = re.sub(r"\\text\{([^{}]*)\}", r"\1", _strip_markdown(text))
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not lines:
        return None
    answer = lines[0].rstrip(".").strip()
    return answer or None


def qa_exact_match(pred: str | None, golds: list[str]) -> bool:
    """Normalised ``pred`` equals the normalised form of any gold answer."""
    if pred is None:
        return False
    p = normalize_qa(pred)
    return any(p == normalize_qa(g) for g in golds)


_YES_NO = {"yes", "no", "noanswer"}


def qa_f1(pred: str | None, golds: list[str]) -> float:
    """Best SQuAD token F1 of ``pred`` against the gold answers (0.0 for no answer); as HotpotQA's official F1,
    a yes/no answer or gold scores 0 against anything but the same word ("no doubt" vs "no")."""
    if pred is None:
        return 0.0
    best = 0.0
    p_tokens = normalize_qa(pred).split()
    for gold in golds:
        g_tokens = normalize_qa(gold).split()
        if (normalize_qa(pred) in _YES_NO or normalize_qa(gold) in _YES_NO) and p_tokens != g_tokens:
            continue
        if not p_tokens or not g_tokens:
            best = max(best, float(p_tokens == g_tokens))
            continue
        common = sum((Counter(p_tokens) & Counter(g_tokens)).values())
        if common:
            precision, recall = common / len(p_tokens), common / len(g_tokens)
            best = max(best, 2 * precision * recall / (precision + recall))
    return best
