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
from collections import Counter
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


# ----------------------------------------------------------------------------------------------- shared bits

def last_boxed(text: str) -> str | None:
    r"""Content of the last ``\boxed{...}`` / ``\fbox{...}`` (braces balanced), or of ``\boxed 5``; else None."""
    boxed, fbox = text.rfind("\\boxed"), text.rfind("\\fbox")
    if boxed < 0 and fbox < 0:
        return None
    i = boxed + len("\\boxed") if boxed > fbox else fbox + len("\\fbox")
    rest = text[i:]
    if rest.startswith(" ") and not rest.lstrip().startswith("{"):
        return rest.strip().split("$")[0].split()[0] if rest.strip() else None
    i = text.find("{", i)
    if i < 0:
        return None
    depth = 0
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1:j]
    return None  # unbalanced


_ANSWER_LEAD = re.compile(r"(?:final answer|the answer|answer)\s*(?:is|:)\s*", re.IGNORECASE)


def after_answer_phrase(text: str) -> str:
    """The text after the last 'answer is' / 'answer:' (the whole text when there is none)."""
    matches = list(_ANSWER_LEAD.finditer(text))
    return text[matches[-1].end():] if matches else text


def _strip_markdown(text: str) -> str:
    return re.sub(r"\*\*|__|`", "", text)


# ----------------------------------------------------------------------------------------------- numbers

_NUM_TOKEN = re.compile(r"""
    (?<![\w.])(?P<sign>[-+])?
    (?:
        (?P<whole>\d+)\s+(?P<mnum>\d+)/(?P<mden>\d+)(?![\d.])                   # mixed number: 2 1/2
      | (?P<num>(?:\d{1,3}(?:,\d{3})+(?![\d])|\d+)(?:\.\d+)?|\.\d+)             # 1,234.5 / 1234 / .5
        (?:\s*/\s*(?P<den>\d+(?:\.\d+)?))?                                      # optional /denominator
    )""", re.VERBOSE)

_LATEX_FRAC = re.compile(r"\\[dt]?frac\s*\{\s*(-?[\d.,]+)\s*\}\s*\{\s*(-?[\d.,]+)\s*\}|\\[dt]?frac(\d)(\d)")


def _plain_math(text: str) -> str:
    r"""LaTeX number dressing removed: \frac{a}{b} -> a/b, {,} and \, dropped, $ \( \) \text{} unwrapped."""
    text = text.replace("\u2212", "-").replace("{,}", ",").replace("\\!", "").replace("\\,", "")
    text = _LATEX_FRAC.sub(lambda m: f"{m[1]}/{m[2]}" if m[1] is not None else f"{m[3]}/{m[4]}", text)
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

    Rules, in order: the last ``\boxed{}`` if any; else the text after the last 'answer is'/'answer:';
    then the text after the last '='; then the first number there. Currency signs, units, '%' and thousands
    separators are ignored: "$1,234.50" -> 2469/2, "\frac{3}{4}" -> 3/4, "2 1/2 hours" -> 5/2,
    "5 + 3 = 8 apples" -> 8. None when there is no number.
    """
    if not text:
        return None
    boxed = last_boxed(text)
    text = _plain_math(boxed if boxed is not None else after_answer_phrase(text))
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

_DELIMS = re.compile(r"\$\$(.+?)\$\$|\$(.+?)\$|\\\((.+?)\\\)|\\\[(.+?)\\\]", re.DOTALL)


def math_answer_text(text: str | None) -> str | None:
    r"""The mathematical answer in an answer text: the last ``\boxed{}``; else (after any 'answer is') the last
    ``$...$`` / ``\(...\)`` / ``\[...\]`` span; else the text itself without a trailing period."""
    if text is None:
        return None
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed.strip()
    text = _strip_markdown(after_answer_phrase(text)).strip()
    spans = _DELIMS.findall(text)
    if spans:
        text = next(s for s in spans[-1] if s)
    text = text.strip().rstrip(".").strip()
    return text or None


def normalize_latex(text: str) -> str:
    r"""Light canonical form for string comparison (Hendrycks-style): no spaces, \left/\right, degrees, %,
    $, trailing unit \text{ ...}; dfrac/tfrac -> frac; \frac12 -> \frac{1}{2}; a/b -> \frac{a}{b}; "x=" dropped
    when the left side has at most 2 characters; lower-cased."""
    s = text.strip().strip("$").strip()
    s = s.replace("\u2212", "-").replace("\n", "")
    s = re.sub(r"\\[!,;: ]", "", s)
    s = s.replace("{,}", ",")
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
    if re.fullmatch(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?", s):
        s = s.replace(",", "")
    s = re.sub(r"^(-?)\.(\d)", r"\g<1>0.\2", s)
    m = re.fullmatch(r"(-?\d+)/(\d+)", s)
    if m:
        s = f"\\frac{{{m[1]}}}{{{m[2]}}}"
    if s.count("=") == 1 and len(s.split("=")[0]) <= 2:
        s = s.split("=")[1]
    return s.rstrip(".").lower()


_PURE_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+)?|[-+]?\.\d+")


def _pure_number(text: str) -> Fraction | None:
    """The value of a text that is only a number (after removing LaTeX dressing and units), else None."""
    s = _plain_math(text).strip().rstrip(".")
    s = re.sub(r"\^\s*\{?\\circ\}?|°|%", "", s).strip()
    if not _PURE_NUMBER.fullmatch(s.replace(" ", "")):
        return None
    return final_number(s.replace(" ", ""))


def _letter_option(text: str) -> str | None:
    r"""'C' for an option answer such as "C", "(C)", "(c)" or "\text{(C)}" (a bare lower-case letter is a variable)."""
    s = re.sub(r"\\text(?:bf)?\s*\{([^{}]*)\}", r"\1", text).replace(" ", "").strip("$")
    m = re.fullmatch(r"\(([A-Ea-e])\)|([A-E])", s)
    return (m[1] or m[2]).upper() if m else None


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

    Tried in order: normalised strings, exact numbers, option letters like ``\\text{(C)}``, then mathematical
    equivalence with math-verify (each parse/verify call limited to ``timeout`` seconds in the main thread).
    """
    if pred is None or not pred.strip():
        return False
    a, b = normalize_latex(pred), normalize_latex(gold)
    if a == b:
        return True
    na, nb = _pure_number(pred), _pure_number(gold)
    if na is not None and nb is not None:
        return na == nb
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
_LEADING_LABEL = re.compile(r"^[(\[]?([A-J])(?:[)\].:]|\s*$)")
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
    that repeats an option's text count. Order: a bare letter ("B", "(b)", "C."); a phrase ("answer is (B)",
    "Answer: C"); a leading label ("B. a protein"); the text of exactly one option; a single parenthesised
    letter; a single standalone capital letter other than the article 'A' / pronoun 'I' in a sentence.
    """
    if text is None:
        return None
    valid = LETTERS[:len(choices)] if choices else LETTERS
    t = _strip_markdown(text).strip().rstrip(".").strip()
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
    if m and m[1] in valid:
        return m[1]
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


def qa_f1(pred: str | None, golds: list[str]) -> float:
    """Best SQuAD token F1 of ``pred`` against the gold answers (0.0 for no answer)."""
    if pred is None:
        return 0.0
    best = 0.0
    p_tokens = normalize_qa(pred).split()
    for gold in golds:
        g_tokens = normalize_qa(gold).split()
        if not p_tokens or not g_tokens:
            best = max(best, float(p_tokens == g_tokens))
            continue
        common = sum((Counter(p_tokens) & Counter(g_tokens)).values())
        if common:
            precision, recall = common / len(p_tokens), common / len(g_tokens)
            best = max(best, 2 * precision * recall / (precision + recall))
    return best
