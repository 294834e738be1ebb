"""LaTeX math answers (MATH): light string normalisation, exact numbers, lists and sets of answers, then
mathematical equivalence with math-verify under a time limit; unboxed LaTeX is never reduced to its last digit."""

from __future__ import annotations

import re
import threading
from fractions import Fraction
from typing import NamedTuple

from .common import (_ANSWER_LEAD, _DELIMS, _strip_markdown, after_answer_phrase, answer_clause, before_special_token,
                     boxed_answer, boxed_group, boxed_spans)
from .numbers import _NUM_TOKEN, _plain_math, _token_value

# a clause that begins with a word is a sentence about the answer ("The smallest $k$ is 12")
_PROSE_START = re.compile(r"[A-Za-z]{2,}[,:]?\s")


def _span_text(m: re.Match) -> str:
    return next(s for s in m.groups() if s is not None)


def _last_math_item(text: str) -> str | None:
    """The last ``$...$``-style span or bare number in ``text`` (None when there is neither)."""
    items = [(m.start(), _span_text(m)) for m in _DELIMS.finditer(text)]
    masked = _DELIMS.sub(lambda m: " " * len(m[0]), text)
    items += [(m.start(), m[0]) for m in _NUM_TOKEN.finditer(masked)]
    return max(items)[1] if items else None


def math_answer_text(text: str | None) -> str | None:
    r"""The mathematical answer in an answer text (the text after the marker).

    The text after the last 'answer is' (any chat-template token and what follows dropped); there, the boxed
    answer (:func:`boxed_answer`); else its leading clause (:func:`answer_clause`): the first ``$...$`` span
    when the clause starts with one, the last span or number when it is a sentence ("The smallest $k$ is 12."
    -> "12"), else the clause itself ("35\nThis uses $5 \cdot 7$." -> "35").
    """
    if text is None:
        return None
    text = after_answer_phrase(before_special_token(text))
    boxed = boxed_answer(text)
    if boxed is not None:
        return boxed or None
    clause = answer_clause(_strip_markdown(text))
    first = _DELIMS.match(clause)
    if first:
        clause = _span_text(first)
    elif _PROSE_START.match(clause):
        clause = _last_math_item(clause) or clause
    clause = clause.strip().rstrip(".").strip()
    return clause or None


def math_unmarked_text(text: str | None) -> str | None:
    r"""The answer of a whole completion without the marker (evaluation): as :func:`math_answer_text` when it
    has a ``\boxed{}`` or an 'answer is', else its last ``$...$`` span or number."""
    if text is None:
        return None
    text = before_special_token(text)
    if boxed_spans(text) or _ANSWER_LEAD.search(text):
        return math_answer_text(text)
    item = _last_math_item(text)
    return item.strip() if item and item.strip() else math_answer_text(text)


def normalize_latex(text: str) -> str:
    r"""Light canonical form for string comparison (Hendrycks-style): no spaces, \left/\right, degrees, %,
    $, trailing unit \text{ ...}; dfrac/tfrac -> frac; \frac12 -> \frac{1}{2}; a/b -> \frac{a}{b}; "x=" dropped
    when the left side is a variable (x, k, x_1); thousands separators dropped unless a comma is followed by a
    space ("4, 250" is a list); lower-cased."""
    s = text.strip().strip("$").strip()
    s = s.replace("\u2212", "-").replace("\n", "")
    s = re.sub(r"\s*\\[!,]\s*", "", s)
    s = re.sub(r"\\[;: ]", "", s).replace(";", ",")
    s = re.sub(r"\s*\{\s*,\s*\}\s*", ",", s)
    is_list = re.search(r",\s", s) is not None
    s = re.sub(r"\\left|\\right", "", s)
    s = re.sub(r"\^\s*\{?\\circ\}?|°", "", s)
    s = s.replace("\\%", "").replace("%", "").replace("\\$", "")
    s = re.sub(r"\\text\{\s[^{}]*\}\s*$", "", s)  # trailing units: 5\text{ cm}
    s = re.sub(r"\\(?:text|textbf|mathrm|mbox)\s*\{([^{}]*)\}", r"\1", s)
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = s.replace(" ", "")
    s = re.sub(r"\\frac(\d)(\d)", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\frac\{([^{}]*)\}(\d)", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\sqrt(\w)", r"\\sqrt{\1}", s)
    if not is_list and re.fullmatch(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?", s):
        s = s.replace(",", "")
    s = re.sub(r"^(-?)\.(\d)", r"\g<1>0.\2", s)
    m = re.fullmatch(r"(-?\d+)/(\d+)", s)
    if m:
        s = f"\\frac{{{m[1]}}}{{{m[2]}}}"
    if s.count("=") == 1 and re.fullmatch(r"[A-Za-z](?:_\{?\w+\}?)?", s.split("=")[0]):
        s = s.split("=")[1]
    return s.rstrip(".").lower()


def _pure_number(text: str) -> Fraction | None:
    """The value of a text that is only a number (after removing LaTeX dressing, currency, degrees and %), a
    mixed number included ("3 2/5", "2\\frac{1}{3}"); else None."""
    s = _plain_math(text)
    s = re.sub(r"\^\s*\{?\\circ\}?|°|%|[€£¥]", " ", s)
    s = " ".join(s.split()).rstrip(".").strip()
    m = _NUM_TOKEN.fullmatch(s)
    return _token_value(m) if m else None


_MIN_ROUNDED_PLACES = 6  # a decimal with this many places or more is a rounded value ("0.142857142857")


def _rounds_to(decimal_text: str, value: Fraction) -> bool:
    """``decimal_text`` is a decimal with many places that agrees with ``value`` to all of them."""
    places = re.search(r"\.(\d+)", decimal_text)
    if not places or len(places[1]) < _MIN_ROUNDED_PLACES:
        return False
    decimal = _pure_number(decimal_text)
    return decimal is not None and abs(decimal - value) < Fraction(1, 10 ** len(places[1]))


_UNIT_WORDS = re.compile(r"(?:\s+[A-Za-z]{2,}\.?)+\s*$")


def _drop_unit_words(text: str) -> str:
    """A number followed by plain words is the number ("12 apples", "2\\frac{1}{3} feet", "14 dollars")."""
    m = _UNIT_WORDS.search(text)
    if not m:
        return text
    head = text[:m.start()]
    bare = re.sub(r"\\[A-Za-z]+", "", head)
    return head if re.search(r"\d", bare) and not re.search(r"[A-Za-z]", bare) else text


def _letter_option(text: str) -> str | None:
    r"""'C' for an option answer such as "C", "(C)", "(c)" or "\text{(C)}" (a bare lower-case letter is a variable)."""
    s = re.sub(r"\\text(?:bf)?\s*\{([^{}]*)\}", r"\1", text).replace(" ", "").strip("$")
    m = re.fullmatch(r"\(([A-Ea-e])\)|([A-E])", s)
    return (m[1] or m[2]).upper() if m else None


# ----------------------------------------------------------------------------------------------- answer lists

# what separates the items of a list besides commas: "and", "or", \text{ and }, \quad (also glued: "\quadx_2"), ";"
_LIST_WORDS = re.compile(r"\\text\s*\{\s*(?:and|or)\s*\}|\\q?quad(?![a-z])|\\q?quad(?=[a-z]_)"
                         r"|(?<![\w\\])(?:and|or)(?!\w)|;")


class Answers(NamedTuple):
    """The answers in one answer text: ``items``, whether their order is free, and the text as one answer."""

    items: list[str]
    unordered: bool
    text: str


def _outer_set(text: str) -> str | None:
    r"""The inside of ``\{...\}`` or ``{...}`` wrapping the whole text, else None."""
    for opening, closing in (("\\{", "\\}"), ("{", "}")):
        if text.startswith(opening) and text.endswith(closing):
            inner = text[len(opening):-len(closing)]
            if _balanced(inner):
                return inner
    return None


def _balanced(text: str) -> bool:
    depth = 0
    for ch in text:
        depth += ch == "{"
        depth -= ch == "}"
        if depth < 0:
            return False
    return depth == 0


def _top_level_items(text: str) -> list[str]:
    """``text`` split at the commas outside brackets ("(1, 2), 3" -> ["(1, 2)", "3"]), empty items dropped."""
    items, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
    items.append(text[start:])
    return [item.strip() for item in items if item.strip()]


def answer_items(text: str) -> Answers:
    r"""The answers in an answer text.

    Several boxes ("\boxed{3} and \boxed{-1}") and sets (``\{1, 2\}``, ``{1, 2}``) are unordered; items are
    separated by commas, semicolons, 'and'/'or' and ``\quad`` outside brackets. A number with thousands
    separators ("4,250") is one answer; "4, 250" (comma and space) is a list.
    """
    group = boxed_group(text)
    if len(group) > 1:
        items = [item.strip() for item in group]
        return Answers(items, True, ", ".join(items))
    text = (group[0] if group else text).strip()
    text = re.sub(r"^\$+|(?<!\\)\$+$", "", text).strip()
    inner = _outer_set(text)
    if _pure_number(text) is not None:
        return Answers([text], False, text)
    items = _top_level_items(_LIST_WORDS.sub(",", inner if inner is not None else text))
    return Answers(items or [text], inner is not None, text)


def _lists_equal(pred: Answers, gold: Answers, timeout: float) -> bool:
    """Lists of plain numbers (neither a set) match in order (Hendrycks: "8, 3, -1" is not "3, 8, -1");
    other lists match as sets of solutions (duplicates ignored), or when math-verify shows them equal."""
    numbers = all(_pure_number(item) is not None for item in pred.items + gold.items)
    if numbers and not (pred.unordered or gold.unordered):
        return len(pred.items) == len(gold.items) and all(
            _single_equal(p, g, timeout) for p, g in zip(pred.items, gold.items))
    seen: dict[tuple[str, str], bool] = {}

    def equal(p: str, g: str) -> bool:
        if (p, g) not in seen:
            seen[p, g] = _single_equal(p, g, timeout)
        return seen[p, g]

    if (all(any(equal(p, g) for g in gold.items) for p in pred.items)
            and all(any(equal(p, g) for p in pred.items) for g in gold.items)):
        return True
    return not numbers and _math_verify(pred.text, gold.text, timeout)


_VERIFY_LOCK = threading.Lock()


def _math_verify(pred: str, gold: str, timeout: float) -> bool:
    try:
        from math_verify import LatexExtractionConfig, parse, verify
    except ImportError:  # optional dependency: without it only string / number equality is used
        return False
    # LaTeX extraction only: math-verify's plain-expression extraction calls sympy's parse_expr, which uses
    # eval(); model output must be parsed, never evaluated as Python.
    latex_only = [LatexExtractionConfig()]
    in_main = threading.current_thread() is threading.main_thread()
    limit = max(1, int(round(timeout))) if in_main else None  # math-verify's limit uses SIGALRM (main only)
    try:
        with _VERIFY_LOCK:
            gold_parsed = parse(f"${gold}$", extraction_config=latex_only, parsing_timeout=limit)
            pred_parsed = parse(f"${pred}$", extraction_config=latex_only, parsing_timeout=limit)
            if not gold_parsed or not pred_parsed:
                return False
            return bool(verify(gold_parsed, pred_parsed, timeout_seconds=limit))
    except Exception:  # noqa: BLE001 - a parse/verify failure or a timeout means "not shown equal"
        return False


def math_equal(pred: str | None, gold: str, timeout: float = 5.0) -> bool:
    """``pred`` and ``gold`` (LaTeX answers, no delimiters needed) are the same answer.

    Lists and sets are compared item by item (:func:`answer_items`); each item by, in order: normalised strings,
    exact numbers (a decimal of 6+ places also by rounding), option letters like ``\\text{(C)}``, then
    mathematical equivalence with math-verify (each parse/verify call limited to ``timeout`` seconds in the main
    thread). Plain unit words after a number are ignored.
    """
    if pred is None or not pred.strip():
        return False
    if normalize_latex(pred) == normalize_latex(gold):
        return True
    preds, golds = answer_items(pred), answer_items(gold)
    if len(preds.items) > 1 or len(golds.items) > 1:
        return _lists_equal(preds, golds, timeout)
    return _single_equal(preds.items[0], golds.items[0], timeout)


def _single_equal(pred: str, gold: str, timeout: float) -> bool:
    """One answer against one gold answer (see :func:`math_equal`)."""
    pred, gold = _drop_unit_words(pred), _drop_unit_words(gold)
    if normalize_latex(pred) == normalize_latex(gold):
        return True
    na, nb = _pure_number(pred), _pure_number(gold)
    if na is not None and nb is not None:
        return na == nb or _rounds_to(pred, nb) or _rounds_to(gold, na)
    la, lb = _letter_option(pred), _letter_option(gold)
    if lb is not None:
        return la == lb
    return _math_verify(pred, gold, timeout)
