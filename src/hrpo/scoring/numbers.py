"""Numeric answers (GSM8K and other number tasks), read exactly: thousands separators, currency, units,
percentages, decimals, fractions, LaTeX fractions and mixed numbers."""

from __future__ import annotations

import re
from fractions import Fraction

from .common import _ANSWER_LEAD, after_answer_phrase, answer_clause, last_boxed

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?|-?\.\d+")


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
