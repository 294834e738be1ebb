"""Answer checks by name: ``number``, ``math``, ``choice``, ``exact``, ``f1``.

Each reads the answer in the text after the marker (or, for evaluation, in a whole completion without one) and
compares it with the example's gold answer (``example['gold']``, else ``example['answer']``; a list holds
several accepted answers). The generic task is built on one of them; as named rewards they work with any task
whose examples carry a gold answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..scoring import (LETTERS, choice_letter, final_number, format_number, marker_count_ok, math_answer_text,
                       math_equal, math_unmarked_text, qa_exact_match, qa_f1, short_answer, text_after_marker,
                       unmarked_number)

MATH_TIMEOUT = 5.0  # seconds per math-verify call (as the math task)


def gold_answers(example: dict) -> list[str]:
    """The accepted answers of ``example`` as strings (``gold``, else ``answer``; a list keeps every item)."""
    gold = example.get("gold", example.get("answer"))
    if gold is None:
        raise KeyError("the example has no 'gold' (or 'answer') field to check against")
    return [str(g) for g in gold] if isinstance(gold, (list, tuple)) else [str(gold)]


def choice_gold(value) -> str:
    """A gold option as a letter: 'B', 'b' or the 0-based index 1 -> 'B'."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(LETTERS):
        return LETTERS[value]
    text = str(value).strip().strip("()").upper()
    return text if text in LETTERS else str(value)


def _number_value(answer: str, example: dict) -> float:
    pred = final_number(answer)
    return float(pred is not None and any(pred == final_number(g) for g in gold_answers(example)))


def _math_value(answer: str, example: dict) -> float:
    return float(any(math_equal(answer, g, timeout=MATH_TIMEOUT) for g in gold_answers(example)))


def _choice_value(answer: str, example: dict) -> float:
    return float(any(answer == choice_gold(g) for g in gold_answers(example)))


@dataclass(frozen=True)
class Check:
    """``parse``: the answer in the text after the marker; ``parse_unmarked``: in a whole completion without the
    marker (evaluation); ``value``: the answer's score against the gold answer, in [0, 1]."""

    name: str
    parse: Callable[[str, dict | None], str | None]
    parse_unmarked: Callable[[str, dict | None], str | None]
    value: Callable[[str, dict], float]


CHECKS = {
    "number": Check("number", lambda t, ex: format_number(final_number(t)),
                    lambda c, ex: format_number(unmarked_number(c)), _number_value),
    "math": Check("math", lambda t, ex: math_answer_text(t), lambda c, ex: math_unmarked_text(c), _math_value),
    "choice": Check("choice", lambda t, ex: choice_letter(t, (ex or {}).get("choices")),
                    lambda c, ex: choice_letter(c, (ex or {}).get("choices")), _choice_value),
    "exact": Check("exact", lambda t, ex: short_answer(t), lambda c, ex: short_answer(c),
                   lambda a, ex: float(qa_exact_match(a, gold_answers(ex)))),
    "f1": Check("f1", lambda t, ex: short_answer(t), lambda c, ex: short_answer(c),
                lambda a, ex: qa_f1(a, gold_answers(ex))),
}


def check_reward(check: Check, completion: str, example: dict, marker: str,
                 require_single_marker: bool = True) -> float:
    """The training reward of ``check``: its value for the answer after the marker; 0.0 without an answer or,
    when ``require_single_marker``, unless the marker occurs exactly once."""
    if require_single_marker and not marker_count_ok(completion, marker):
        return 0.0
    text = text_after_marker(completion, marker)
    answer = None if text is None else check.parse(text, example)
    return 0.0 if answer is None else float(check.value(answer, example))


def check_score(check: Check, completion: str, example: dict, marker: str) -> dict:
    """Evaluation scoring with ``check``, lenient on format (the whole completion when the marker is missing):
    ``{answer, correct (value >= 1), format_ok, score (value)}``."""
    text = text_after_marker(completion, marker)
    answer = check.parse_unmarked(completion, example) if text is None else check.parse(text, example)
    value = 0.0 if answer is None else float(check.value(answer, example))
    return {"answer": answer, "correct": value >= 1.0, "format_ok": marker_count_ok(completion, marker),
            "score": value}
