"""Answer extraction and checking shared by tasks.

Four families, each written to avoid a parser bug of the reference (hrpo-reference.md section 8/12):
  * numbers (GSM8K): thousands separators, currency, units, percentages, decimals, fractions, mixed numbers;
  * LaTeX math (MATH): light string normalisation, exact numbers, then mathematical equivalence with
    math-verify under a time limit; unboxed LaTeX is never reduced to its last digit;
  * multiple-choice letters: the article 'a' and the pronoun 'I' are not read as options;
  * short QA answers: SQuAD normalisation, exact match and token F1.
"""

from __future__ import annotations

import re
import string
import threading
import unicodedata
from collections import Counter
from fractions import Fraction
from typing import NamedTuple

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?|-?\.\d+")


def text_after_marker(completion: str, marker: str) -> str | None:
    """Text after the last ``marker`` (stripped, one trailing '.' dropped), or None when the marker is absent."""
    if marker not in completion:
        return None
    text = completion.rsplit(marker, 1)[1].strip()
    return text[:-1].strip() if text.endswith(".") else text


def marker_count_ok(completion: str, marker: str) -> bool:
    """The training format rule of the reference: the marker occurs exactly once."""
    return completion.count(marker) == 1


def parse_number(text: str | None) -> Fraction | None:
    """The first number in ``text`` as an exact Fraction ("1,234" -> 1234, "3/4" -> 3/4, "-2.50" -> -5/2)."""
    if not text:
        return None
    match = _NUMBER.search(text)
    if not match:
        return None
    token = match.group(0).replace(",", "")
    try:
        return Fraction(token)
    except (ValueError, ZeroDivisionError):
        return None


# ----------------------------------------------------------------------------------------------- shared bits

def last_boxed(text: str) -> str | None:
    r"""Content of the last ``\boxed{...}`` / ``\fbox{...}`` (braces balanced), or of ``\boxed 5``; else None."""
    spans = boxed_spans(text)
    return spans[-1][2] if spans else None


_BOXED = re.compile(r"\\boxed|\\fbox")


def _boxed_content(text: str, i: int) -> tuple[str, int] | None:
    """The argument of a ``\\boxed`` whose name ends at ``i`` and the index after it (None: no or unbalanced one)."""
    rest = text[i:]
    if rest.startswith(" ") and not rest.lstrip().startswith("{"):
        token = rest.strip().split("$")[0].split()
        return (token[0], text.index(token[0], i) + len(token[0])) if token else None
    opening = re.match(r"\s*\{", rest)
    if not opening:
        return None
    depth, start = 0, i + opening.end() - 1
    for j in range(start, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[start + 1:j], j + 1
    return None


def boxed_spans(text: str) -> list[tuple[int, int, str]]:
    r"""Every top-level ``\boxed{}`` / ``\fbox{}`` in ``text`` as (start, end, content)."""
    spans, i = [], 0
    while (m := _BOXED.search(text, i)):
        found = _boxed_content(text, m.end())
        if found is None:
            i = m.end()
            continue
        spans.append((m.start(), found[1], found[0]))
        i = found[1]
    return spans


_BOX_GAP = 40  # at most this many characters (no line break, no sentence end) between boxes of one answer


def _joins_boxes(gap: str) -> bool:
    r"""The text between two boxes makes them one answer: short, on one line, not a sentence end, and any
    words in it include 'and' / 'or' (", ", " and ", "\quad \text{or} \quad"; not " is wrong, see ")."""
    if len(gap) > _BOX_GAP or "\n" in gap or re.search(r"[.!?]\s", gap):
        return False
    words = set(re.findall(r"(?<!\\)\b[A-Za-z]{2,}\b", gap)) - {"text", "quad", "qquad"}
    return not words or bool(words & {"and", "or"})


def boxed_group(text: str) -> list[str]:
    r"""The contents of the last ``\boxed{}`` and of the boxes just before it that belong to the same answer
    (joined by a short gap such as ", ", " and " or ``\quad``: "\boxed{3} and \boxed{-1}" -> ["3", "-1"])."""
    spans = boxed_spans(text)
    if not spans:
        return []
    group = [spans[-1]]
    for span in reversed(spans[:-1]):
        if not _joins_boxes(text[span[1]:group[0][0]]):
            break
        group.insert(0, span)
    return [content for _, _, content in group]


def boxed_answer(text: str) -> str | None:
    r"""The boxed answer of ``text``: the content of its box, or "\boxed{a}, \boxed{b}" for several boxes that
    form one answer (kept boxed so that :func:`math_equal` compares them as a set); None without a box."""
    group = boxed_group(text)
    if len(group) > 1:
        return ", ".join(f"\\boxed{{{item.strip()}}}" for item in group)
    return group[0].strip() if group else None


_ANSWER_LEAD = re.compile(r"(?:final answer|the answer|answer)\s*(?:is|:)\s*", re.IGNORECASE)


def after_answer_phrase(text: str) -> str:
    """The text after the last 'answer is' / 'answer:' (the whole text when there is none)."""
    matches = list(_ANSWER_LEAD.finditer(text))
    return text[matches[-1].end():] if matches else text


def _strip_markdown(text: str) -> str:
    return re.sub(r"\*\*|__|`", "", text)


_SPECIAL_TOKEN = re.compile(r"<\|[A-Za-z_]+\|>")


def before_special_token(text: str) -> str:
    """The text before the first chat-template token such as ``<|im_start|>`` (what follows is not the answer)."""
    return _SPECIAL_TOKEN.split(text, 1)[0]


# where the statement of an answer ends: a line break, the end of a sentence, or an explanation that follows it
_CLAUSE_END = re.compile(r"\n|[.!?](?=\s+[A-Z(\[])|[.!?]\s*$|,?\s+(?:because|since)\b|\s+\((?=[A-Za-z]{2,})")


def answer_clause(text: str) -> str:
    r"""The leading clause of an answer text: up to the first line break, sentence end, 'because'/'since' or
    parenthesised remark, ignoring those inside ``$...$`` / ``\[...\]`` spans ("42. Check: 40 + 2 = 42" -> "42")."""
    text = text.strip()
    masked = _DELIMS.sub(lambda m: "$" * len(m[0]), text)
    end = _CLAUSE_END.search(masked)
    return (text[:end.start()] if end else text).strip()


# ----------------------------------------------------------------------------------------------- numbers

_NUM_TOKEN = re.compile(r"""
    (?<![\w.])(?P<sign>[-+])?
    (?:
        (?P<whole>\d+)\s+(?P<mnum>\d+)/(?P<mden>\d+)(?![\d.])                   # mixed number: 2 1/2
      | (?P<num>(?:\d{1,3}(?:,\d{3})+(?![\d])|\d+)(?:\.\d+)?|\.\d+)             # 1,234.5 / 1234 / .5
        (?:\s*/\s*(?P<den>\d+(?:\.\d+)?))?                                      # optional /denominator
    )""", re.VERBOSE)

_LATEX_FRAC = re.compile(r"\\[dt]?frac\s*\{\s*(-?[\d.,]+)\s*\}\s*\{\s*(-?[\d.,]+)\s*\}|\\[dt]?frac(\d)(\d)")


def _frac_as_slash(m: re.Match) -> str:
    r"""\frac{a}{b} -> "a/b"; after a digit -> " a/b", so that 2\frac{1}{3} reads as the mixed number 2 1/3."""
    frac = f"{m[1]}/{m[2]}" if m[1] is not None else f"{m[3]}/{m[4]}"
    return " " + frac if m.start() > 0 and m.string[m.start() - 1].isdigit() else frac


def _plain_math(text: str) -> str:
    r"""LaTeX number dressing removed: \frac{a}{b} -> a/b (2\frac{1}{3} -> 2 1/3), {,} and \, dropped,
    $ \( \) \text{} unwrapped."""
    text = re.sub(r"\s*\{\s*,\s*\}\s*", ",", text.replace("\u2212", "-"))
    text = re.sub(r"\s*\\[!,]\s*", "", text)
    text = _LATEX_FRAC.sub(_frac_as_slash, text)
    text = re.sub(r"\\(?:text|textbf|mathrm|mbox)\s*\{([^{}]*)\}", r" \1 ", text)
    text = re.sub(r"\\left|\\right|\\[()\[\]]|\\%|\\\$", " ", text)
    return text.replace("$", " ")


def _token_value(m: re.Match) -> Fraction | None:
    sign = -1 if m["sign"] == "-" else 1
    try:
        if m["whole"] is not None:
            return sign * (int(m["whole"]) + Fraction(int(m["mnum"]), int(m["mden"])))
        value = Fraction(m["num"].replace(",", ""))
        if m["den"] is not None:
            value /= Fraction(m["den"])
        return sign * value
    except (ValueError, ZeroDivisionError):
        return None


def final_number(text: str | None) -> Fraction | None:
    r"""The numeric answer in a short answer text, exactly.

    Rules, in order: the last ``\boxed{}`` if any; else the leading clause (:func:`answer_clause`) of the text
    after the last 'answer is'/'answer:'; then the text after the last '='; then the first number there.
    Currency signs, units, '%' and thousands separators are ignored: "$1,234.50" -> 2469/2, "\frac{3}{4}" -> 3/4,
    "2 1/2 hours" -> 5/2, "5\frac{3}{4}" -> 23/4, "5 + 3 = 8 apples" -> 8, "18 because 3*6=18" -> 18. None when
    there is no number.
    """
    if not text:
        return None
    boxed = last_boxed(text)
    text = _plain_math(boxed if boxed is not None else answer_clause(after_answer_phrase(text)))
    if "=" in text:
        text = text.rsplit("=", 1)[1]
    match = _NUM_TOKEN.search(text)
    return _token_value(match) if match else None


def unmarked_number(text: str | None) -> Fraction | None:
    r"""The numeric answer of a whole completion that lacks the answer marker, read as the reference's eval
    reads it: the last ``\boxed{}`` or the text after the last 'answer is' when there is one (then as
    :func:`final_number`), else the **last** number ("... 9 eggs at $2 each, so $18 a day." -> 18)."""
    if not text:
        return None
    if last_boxed(text) is not None or _ANSWER_LEAD.search(text):
        return final_number(text)
    matches = list(_NUM_TOKEN.finditer(_plain_math(text)))
    return _token_value(matches[-1]) if matches else None


def numbers_equal(pred: str | None, gold: str | None) -> bool:
    """Both texts hold a number (see :func:`final_number`) and the numbers are equal."""
    a, b = final_number(pred), final_number(gold)
    return a is not None and b is not None and a == b


def format_number(value: Fraction | None) -> str | None:
    """Canonical text of an exact number: "1000", "-2.5", "1/3"."""
    if value is None:
        return None
    if value.denominator == 1:
        return str(value.numerator)
    den = value.denominator
    while den % 2 == 0:
        den //= 2
    while den % 5 == 0:
        den //= 5
    return str(float(value)) if den == 1 else f"{value.numerator}/{value.denominator}"


# ----------------------------------------------------------------------------------------------- LaTeX math

# $$...$$, $...$, \(...\), \[...\]; an escaped \$ (a dollar sign, as in $\$14$) is no delimiter
_DELIMS = re.compile(r"(?<!\\)\$\$(.+?)(?<!\\)\$\$|(?<!\\)\$(.+?)(?<!\\)\$|\\\((.+?)\\\)|\\\[(.+?)\\\]", re.DOTALL)

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


# ----------------------------------------------------------------------------------------------- letters

LETTERS = "ABCDEFGHIJ"

# "answer is (B)", "Answer: B", "option C", "the correct choice is [d]"
_LETTER_PHRASE = re.compile(
    r"(?i:answer|option|choice)\s*(?i:is|:|=)?\s*(?i:option|choice)?\s*[:\-]?\s*"
    r"(?:\(([A-Ja-j])\)|\[([A-Ja-j])\]|([A-J])(?![\w'])|([a-j])(?=\s*[.)]?\s*$))")
# "B. a protein", "(C)", "A\nB is wrong", "A, because ...", "d) their energy ..." (not "A, B and C")
_LEADING_LABEL = re.compile(r"^[(\[]?([A-J])(?:[)\].:;]|,(?!\s*[A-J]\b)|\s*(?:$|\n))|^([a-j])\)")
_PAREN_LETTER = re.compile(r"[(\[]([A-J])[)\]]")
_LONE_LETTER = re.compile(r"(?<![\w'])([A-J])(?![\w'])")


# words after which 'A' / 'I' is still a letter ("A or B", "A is correct", "I and J")
_AFTER_LETTER = {"A": {"or", "and", "nor", "vs", "versus", "is", "was", "seems", "looks", "would", "could",
                       "should", "might", "must", "because", "since", "but", "then", "as", "instead"},
                 "I": {"or", "and", "nor", "vs", "versus", "is", "was", "seems", "looks"}}


def _is_word_use(text: str, end: int, letter: str) -> bool:
    """'A'/'I' followed by a lower-case word is the article or the pronoun ("a protein", "I think"), unless
    the word is one that follows an option letter ("A or B", "A is correct")."""
    if letter not in _AFTER_LETTER:
        return False
    m = re.match(r"\s+([a-z]+)", text[end:])
    return m is not None and m[1] not in _AFTER_LETTER[letter]


def _norm_choice(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def choice_letter(text: str | None, choices: list[str] | None = None) -> str | None:
    """The option letter an answer text names, or None when there is none or it is ambiguous.

    ``choices`` (the option texts, lettered A, B, ... by position) limits the valid letters and lets an answer
    that repeats an option's text count; full-width letters count as letters (NFKC). Order: a bare letter ("B",
    "(b)", "C."); a phrase ("answer is (B)", "Answer: C"); a leading label ("B. a protein", "A, because B is
    wrong", "A" alone on the first line, "d) ..."); the text of exactly one option; a single parenthesised
    letter; a single standalone capital letter other than the article 'A' / pronoun 'I' in a sentence.
    """
    if text is None:
        return None
    valid = LETTERS[:len(choices)] if choices else LETTERS
    t = _strip_markdown(unicodedata.normalize("NFKC", text)).strip().rstrip(".").strip()
    if not t:
        return None
    m = re.fullmatch(r"[(\[]?([A-Ja-j])[)\]]?[.:]?", t)
    if m and m[1].upper() in valid:
        return m[1].upper()
    for m in reversed(list(_LETTER_PHRASE.finditer(t))):
        letter = next(g for g in m.groups() if g)
        upper = letter.upper()
        if upper in valid and not (letter == m[3] and _is_word_use(t, m.end(), letter)):
            return upper
    m = _LEADING_LABEL.match(t)
    if m and (m[1] or m[2].upper()) in valid:
        return m[1] or m[2].upper()
    if choices:
        wanted = {_norm_choice(t), _norm_choice(after_answer_phrase(t))}
        hits = {LETTERS[i] for i, c in enumerate(choices) if _norm_choice(c) and _norm_choice(c) in wanted}
        if len(hits) == 1:
            return hits.pop()
    paren = {m[1] for m in _PAREN_LETTER.finditer(t) if m[1] in valid}
    if len(paren) == 1:
        return paren.pop()
    lone = {m[1] for m in _LONE_LETTER.finditer(t) if m[1] in valid and not _is_word_use(t, m.end(), m[1])}
    if len(lone) == 1:
        return lone.pop()
    return None


# ----------------------------------------------------------------------------------------------- short QA

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
