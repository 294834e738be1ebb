"""Answer extraction and checking shared by tasks."""

from __future__ import annotations

import re
from fractions import Fraction

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
