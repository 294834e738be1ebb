"""Multiple-choice answers: the option letter an answer names; the article 'a' and the pronoun 'I' are not read
as options."""

from __future__ import annotations

import re
import unicodedata

from .common import _strip_markdown, after_answer_phrase

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
